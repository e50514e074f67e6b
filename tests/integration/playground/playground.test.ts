import { existsSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { serverSkipReason, startPrivateServer, type PrivateServer } from '../../support/server.js';
import { ensureImages, vmSkipReason } from '../../support/vm.js';

/**
 * The playground in a real browser: Debian's chromium, headless, driven by playwright-core,
 * against a real `runner serve` (startServer, the real engine, python VMs) with API keys on.
 * The page is loaded at `/`, code typed into its CodeMirror editor, Run clicked, and the
 * streamed output read off the page. The bundle is built from source by the server itself on
 * the first request (no build step), into the private data dir.
 */
const CHROMIUM = '/usr/bin/chromium';
const KEY = 'playground-test-key';

const reason = !existsSync(CHROMIUM)
  ? `${CHROMIUM} is not installed (scripts/setup.sh --test installs chromium)`
  : (serverSkipReason() ?? vmSkipReason());
if (reason !== null) console.warn(`tests/integration/playground skipped: ${reason}`);

describe.skipIf(reason !== null)('the playground at / in chromium, on real VMs', () => {
  let fixture: PrivateServer | undefined;
  let browser: Browser | undefined;
  let page: Page;
  /** What the page logged about Content-Security-Policy violations (none expected). */
  const violations: string[] = [];
  const pageErrors: string[] = [];

  beforeAll(async () => {
    await ensureImages(['python']);
    fixture = await startPrivateServer('rc-playground-it-', {
      apiKeys: [KEY],
      warmLanguages: ['python'],
    });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox'],
    });
    page = await browser.newPage();
    page.on('console', (m) => {
      if (/content security policy/i.test(m.text())) violations.push(m.text());
    });
    page.on('pageerror', (e) => pageErrors.push(e.message));
  });

  afterAll(async () => {
    await browser?.close();
    // Every VM was destroyed: nothing is left in the private run dir.
    if (fixture) expect(await fixture.close()).toEqual([]);
  });

  const url = (path: string): string => {
    if (!fixture) throw new Error('the server did not start');
    return fixture.url(path);
  };
  const text = async (selector: string): Promise<string> =>
    (await page.locator(selector).textContent()) ?? '';
  /** Waits until the element's text matches `re`. */
  const waitText = async (selector: string, re: RegExp, timeoutMs = 60_000): Promise<void> => {
    // Polled from here: the page's CSP forbids the string evaluation waitForFunction would need.
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const now = await text(selector);
      if (re.test(now)) return;
      if (Date.now() > deadline)
        throw new Error(`${selector} never matched ${String(re)} (it says ${JSON.stringify(now)})`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const waitEnabled = async (selector: string, timeoutMs = 60_000): Promise<void> => {
    await page.waitForSelector(`${selector}:enabled`, { timeout: timeoutMs });
  };
  /** Replaces the editor's text, as typed text (one input, so no auto-indent or bracket closing). */
  const setCode = async (code: string): Promise<void> => {
    await page.locator('.cm-content').click();
    await page.keyboard.press('Control+A');
    await page.keyboard.press('Delete');
    await page.keyboard.insertText(code);
    // CodeMirror draws a line per element, so its text has no line breaks.
    expect(await text('.cm-content')).toBe(code.replace(/\n/g, ''));
  };
  const runAndWait = async (): Promise<void> => {
    await page.click('#run');
    await waitText('#status', /^Status: /);
  };

  test('without a key the page asks for one (the APIs answer 401)', async () => {
    await page.goto(url('/'));
    await waitText('#notice', /needs an API key/);
    expect(await page.locator('#notice').isVisible()).toBe(true);
    expect(await page.locator('#language').isDisabled()).toBe(true);
  });

  test('with the key: python is picked, a run streams its output in two chunks with the pause between', async () => {
    await page.fill('#api-key', KEY);
    await page.click('#save-key');
    await waitEnabled('#language');
    expect(await page.locator('#notice').isVisible()).toBe(false);
    await page.selectOption('#language', 'python');
    // The key is kept for the next visit.
    expect(await page.evaluate('localStorage.getItem("runner-playground-api-key")')).toBe(KEY);
    await setCode(
      'import sys, time\nprint("first chunk")\nprint("to stderr", file=sys.stderr)\ntime.sleep(1.5)\nprint("second chunk")\n',
    );
    await page.click('#run');
    await waitText('#output', /first chunk/);
    const firstAt = Date.now();
    // Streamed: the first line is on the page while the program sleeps.
    expect(await text('#output')).not.toContain('second chunk');
    expect(await text('#status')).toMatch(/^Running/);
    await waitText('#output', /second chunk/);
    const pauseMs = Date.now() - firstAt;
    expect(pauseMs).toBeGreaterThan(1000);
    await waitText('#status', /^Status: /);
    const status = await text('#status');
    expect(status).toMatch(/^Status: ok/);
    expect(status).toMatch(/exit code 0/);
    expect(status).toMatch(/wall time \d+ ms/);
    expect(status).toMatch(/memory \d+\.\d MiB/);
    // stdout and stderr in order, stderr told apart.
    expect(await text('#output')).toBe('first chunk\nto stderr\nsecond chunk\n');
    expect(await page.locator('#output .stderr').textContent()).toBe('to stderr\n');
    console.info(
      `playground: the two chunks arrived ${pauseMs} ms apart (the program slept 1500 ms)`,
    );
  });

  test('an interactive program is answered by typing into the page', async () => {
    await setCode(
      'import sys\nwhile True:\n    line = sys.stdin.readline()\n    if not line:\n        break\n    print("echo:", line.strip().upper())\nprint("bye")\n',
    );
    await page.click('#run');
    await waitEnabled('#input-line');
    await page.fill('#input-line', 'hello');
    await page.press('#input-line', 'Enter');
    await waitText('#output', /echo: HELLO/);
    await page.fill('#input-line', 'world');
    await page.click('#send');
    await waitText('#output', /echo: WORLD/);
    // Still running, waiting for more, until stdin is closed.
    expect(await text('#status')).toMatch(/^Running/);
    await page.click('#eof');
    await waitText('#status', /^Status: /);
    expect(await text('#status')).toMatch(/^Status: ok/);
    expect(await text('#output')).toBe('hello\necho: HELLO\nworld\necho: WORLD\nbye\n');
  });

  test('the stdin box is sent, then closed', async () => {
    await setCode('import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))\n');
    await page.fill('#stdin', '1 2 3\n4\n');
    await runAndWait();
    expect(await text('#output')).toBe('10\n');
    await page.fill('#stdin', '');
  });

  test('Stop kills a program that runs forever, while it runs or before it started', async () => {
    await setCode('while True:\n    pass\n');
    for (const when of ['running', 'at once'] as const) {
      await page.click('#run');
      // At once: before the socket opened or the program started (the page signals it then).
      if (when === 'running') await waitText('#status', /^Running/);
      await page.click('#stop');
      await waitEnabled('#run', 30_000);
      const status = await text('#status');
      console.info(`playground: Stop ${when}: the page says ${JSON.stringify(status)}`);
      expect(status).toMatch(/^Status: runtime_error · signal SIGKILL/);
    }
  });

  test('test cases: a pass and a fail verdict', async () => {
    await setCode('n = int(input())\nprint(n * 2)\n');
    await page.click('#add-case');
    await page.click('#add-case');
    const cases = page.locator('#cases .case');
    expect(await cases.count()).toBe(2);
    await cases.nth(0).locator('.case-stdin').fill('2\n');
    await cases.nth(0).locator('.case-expected').fill('4\n');
    await cases.nth(1).locator('.case-stdin').fill('3\n');
    await cases.nth(1).locator('.case-expected').fill('7\n');
    await page.click('#run-tests');
    await waitText('#tests-summary', /of 2 passed/);
    expect(await text('#tests-summary')).toMatch(/^1 of 2 passed/);
    expect(await cases.nth(0).locator('.verdict').textContent()).toBe('Passed');
    expect(await cases.nth(1).locator('.verdict').textContent()).toMatch(
      /^Failed: wrong_answer \(line 1: expected "7", got "6"\)/,
    );
  });

  test('a wrong key: the APIs and the WebSocket refuse it, and the page says so', async () => {
    await page.fill('#api-key', 'not-the-key');
    await page.click('#save-key');
    await waitText('#notice', /did not accept the API key/);
    await page.evaluate('document.querySelector("#notice").hidden = true');
    // The language list stays from before; a run is refused on the WebSocket.
    await setCode('print("never")\n');
    await page.click('#run');
    await waitText('#notice', /did not accept the API key/);
    await waitEnabled('#run');
    expect(await text('#output')).toBe('');
  });

  test('the page ran under its CSP with no violation and no script error', () => {
    expect(violations).toEqual([]);
    expect(pageErrors).toEqual([]);
  });
});
