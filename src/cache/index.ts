/** Host-side caches of work done in VMs: compiles kept by their exact inputs. */
export { compileKey, CompileCache, type CompileCacheOptions } from './compile-cache.js';
