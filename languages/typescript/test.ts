const lang: string = 'typescript';
const line: string[] = ['runner-test:', lang, 'ok'];
console.log(line.join(' '));
