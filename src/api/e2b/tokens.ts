import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { UnauthorizedError } from '../../errors.js';

/** Bytes of the server secret. */
const SECRET_BYTES = 32;
/** Marks the token format, so that a later one can be told apart. */
const VERSION = 'v1';
/** The owner part of a token made without API keys. */
const NO_OWNER = '-';

/**
 * The per-sandbox access tokens of the in-sandbox routes (E2B's `envdAccessToken`, sent back as
 * `X-Access-Token`). A token is `v1.<owner>.<mac>`: the owner is the fingerprint of the API
 * key that made the sandbox (`-` without keys), and the mac an HMAC-SHA256 of the sandbox id
 * and that owner under a server secret. So a token names the owner the engine's calls must
 * use (those routes carry no API key), and cannot be forged or moved to another sandbox.
 *
 * The secret is 32 random bytes kept in a file under the data dir (mode 0600), made on first
 * use: a paused sandbox resumed after a restart keeps its token. When the file can be neither
 * read nor written, the secret is this process's only (`warn` says so): tokens then end with it.
 */
export class AccessTokens {
  private secret: Buffer | null = null;

  constructor(
    private readonly secretFile: string,
    private readonly warn: (message: string) => void,
    /** Whether a token's owner is still a configured API key (a removed key's tokens fail). */
    private readonly ownerValid: (owner: string | null) => boolean = () => true,
  ) {}

  /** The token of sandbox `id` made by `owner`. */
  issue(id: string, owner: string | null): string {
    const o = owner ?? NO_OWNER;
    return `${VERSION}.${o}.${this.mac(id, o)}`;
  }

  /** The owner a valid token of sandbox `id` names; throws UNAUTHORIZED. */
  verify(id: string, token: string | undefined): string | null {
    if (token === undefined || token === '')
      throw new UnauthorizedError('the X-Access-Token header (the envdAccessToken) is required');
    const [version, owner, mac, ...rest] = token.split('.');
    if (version !== VERSION || owner === undefined || mac === undefined || rest.length > 0)
      throw new UnauthorizedError('the access token is not valid for this sandbox');
    const want = Buffer.from(this.mac(id, owner));
    const got = Buffer.from(mac);
    if (want.length !== got.length || !timingSafeEqual(want, got))
      throw new UnauthorizedError('the access token is not valid for this sandbox');
    const found = owner === NO_OWNER ? null : owner;
    if (!this.ownerValid(found))
      throw new UnauthorizedError('the API key this sandbox was made with is no longer configured');
    return found;
  }

  private mac(id: string, owner: string): string {
    return createHmac('sha256', this.key()).update(`e2b-envd\0${id}\0${owner}`).digest('base64url');
  }

  private key(): Buffer {
    this.secret ??= this.load();
    return this.secret;
  }

  private load(): Buffer {
    try {
      const s = readFileSync(this.secretFile);
      if (s.length === SECRET_BYTES) return s;
      this.warn(`${this.secretFile} is not ${SECRET_BYTES} bytes: making a new E2B token secret`);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
        this.warn(`cannot read ${this.secretFile}: ${(err as Error).message}`);
    }
    const s = randomBytes(SECRET_BYTES);
    try {
      mkdirSync(dirname(this.secretFile), { recursive: true });
      const tmp = `${this.secretFile}.${process.pid}.tmp`;
      writeFileSync(tmp, s, { mode: 0o600 });
      chmodSync(tmp, 0o600);
      renameSync(tmp, this.secretFile);
    } catch (err) {
      this.warn(
        `cannot keep the E2B token secret in ${this.secretFile} (${(err as Error).message}): sandbox access tokens will not survive a restart`,
      );
    }
    return s;
  }
}
