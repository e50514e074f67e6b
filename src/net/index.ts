export * from './vmnet.js';
