const parts = ['runner-test:', 'javascript', 'ok'];
console.log(parts.join(' '));
