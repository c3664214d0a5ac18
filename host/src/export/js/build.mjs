// Transpiles keygate's gateway component for a JavaScript host with jco
// (@bytecodealliance/jco-transpile), in the folder `keygate export --for node|workerd` wrote.
// Run by the export, after `npm ci` installed the pinned packages next to this file:
//
//   node build.mjs node       gateway.wasm -> gateway/gateway.js (+ core modules), run by
//                             server.mjs with @bytecodealliance/preview2-shim's Node shims
//   node build.mjs workerd    gateway.wasm, key-cache.wasm, counters.wasm -> transpiled/,
//                             preview2-shim's browser shims -> shim/, and
//                             transpiled/modules.mjs, which imports every core module
//                             statically (workerd compiles no Wasm at run time)
//
// The outputs are cached in node_modules/.cache/keygate/, by the hash of this script, the
// target and the input components: exporting the same component again copies them from there.
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const target = process.argv[2];
const inputs = { node: ['gateway.wasm'], workerd: ['gateway.wasm', 'key-cache.wasm', 'counters.wasm'] }[target];
const outputs = { node: ['gateway'], workerd: ['transpiled', 'shim'] }[target];
if (!inputs) {
  console.error('usage: node build.mjs node|workerd');
  process.exit(2);
}
const hash = createHash('sha256');
hash.update(readFileSync(fileURLToPath(import.meta.url)));
hash.update(`\0${target}\0`);
for (const input of inputs) hash.update(readFileSync(join(here, input)));
const cache = join(here, 'node_modules', '.cache', 'keygate', hash.digest('hex'));
for (const output of outputs) rmSync(join(here, output), { recursive: true, force: true });
if (existsSync(cache)) {
  for (const output of outputs) cpSync(join(cache, output), join(here, output), { recursive: true });
  process.exit(0);
}
const { transpile } = await import('@bytecodealliance/jco-transpile');

async function transpileInto(outDir, name, wasm, opts) {
  const { files } = await transpile(join(here, wasm), {
    name,
    outDir,
    emitTypescriptDeclarations: false,
    quiet: true,
    ...opts,
  });
  const written = [];
  for (const [path, bytes] of Object.entries(files)) {
    mkdirSync(dirname(join(here, path)), { recursive: true });
    writeFileSync(join(here, path), bytes);
    written.push(path);
  }
  return written;
}

if (target === 'node') {
  // Imports resolve to @bytecodealliance/preview2-shim (wasiShim): the component is
  // instantiated when server.mjs imports it, once for the process.
  await transpileInto('gateway', 'gateway', 'gateway.wasm', {});
} else if (target === 'workerd') {
  const out = 'transpiled';
  // The gateway, instantiated per request: its blocking WASI calls (wasi:io/poll, streams,
  // the outgoing handler) suspend on promises through JSPI, so `fetch` can run underneath.
  await transpileInto(out, 'gateway', 'gateway.wasm', {
    instantiation: 'async',
    asyncMode: 'jspi',
    asyncWasiImports: true,
    asyncWasiExports: true,
    base64Cutoff: 0,
  });
  // The key-cache and counters adapters, instantiated once per isolate (the worker's module
  // scope), so verdicts and counts outlive a request.
  for (const name of ['key-cache', 'counters']) {
    await transpileInto(out, name, `${name}.wasm`, { instantiation: 'async', base64Cutoff: 0 });
  }
  // jco writes small helper modules inline (`new WebAssembly.Module(new Uint8Array([...]))`);
  // workerd forbids compiling Wasm at run time, so they become modules of their own, handed
  // over through globalThis.__keygateInlineWasm by modules.mjs.
  const inline = [];
  for (const file of readdirSync(join(here, out)).filter((f) => f.endsWith('.js'))) {
    const path = join(here, out, file);
    const js = readFileSync(path, 'utf8').replace(
      /new WebAssembly\.Module\(\s*new Uint8Array\(\[([0-9a-fA-Fx,\s]*)\]\)\s*\)/g,
      (_, list) => {
        const bytes = Uint8Array.from(list.split(',').map((s) => s.trim()).filter(Boolean).map(Number));
        const name = `inline${inline.length}.wasm`;
        writeFileSync(join(here, out, name), bytes);
        inline.push(name);
        return `globalThis.__keygateInlineWasm[${inline.length - 1}]`;
      },
    );
    writeFileSync(path, js);
  }
  const wasm = readdirSync(join(here, out)).filter((f) => f.endsWith('.wasm') && !f.startsWith('inline'));
  const lines = [
    '// Written by build.mjs: every core module, imported statically (workerd compiles them at',
    '// load; a Worker may not compile Wasm at run time).',
  ];
  wasm.forEach((file, i) => lines.push(`import core${i} from './${file}';`));
  inline.forEach((file, i) => lines.push(`import inline${i} from './${file}';`));
  lines.push(`globalThis.__keygateInlineWasm = [${inline.map((_, i) => `inline${i}`).join(', ')}];`);
  lines.push('export const coreModules = new Map([');
  wasm.forEach((file, i) => lines.push(`  [${JSON.stringify(file)}, core${i}],`));
  lines.push(']);');
  writeFileSync(join(here, out, 'modules.mjs'), lines.join('\n') + '\n');
  // The shims of WASI for the Web (fetch, Web streams), from the pinned preview2-shim.
  const browser = join(here, 'node_modules', '@bytecodealliance', 'preview2-shim', 'dist', 'browser');
  mkdirSync(join(here, 'shim'), { recursive: true });
  for (const file of readdirSync(browser).filter((f) => f.endsWith('.js'))) {
    copyFileSync(join(browser, file), join(here, 'shim', file));
  }
  // Streaming responses: the Web bridge of preview2-shim 0.26.1 buffers a response until the
  // component finishes its body, and hands it over only when the handler returns. worker.mjs
  // has a bridge of its own that returns the response once the component sets it; here its
  // body becomes a stream (as request bodies already can be), a body dropped unfinished errors
  // that stream (the client sees a cut response), and the bridge gets the shim's constructors.
  const patches = [
    [
      '? await outgoingBodyFinishedData(response.#body)',
      '? ([101, 103, 204, 205, 304].includes(response.#status) ? null : outgoingBodyRequestStream(response.#body))',
    ],
    [
      '    [symbolDispose]() { }\n}\nconst outgoingBodyCreate = OutgoingBody._create;',
      `    [symbolDispose]() {
        if (!this.#finished && !this.#requestStreamCancelled && this.#requestStreamController) {
            this.#finished = true;
            this.#requestStreamController.error(new Error("the body was not finished"));
        }
    }
}
const outgoingBodyCreate = OutgoingBody._create;`,
    ],
  ];
  const httpPath = join(here, 'shim', 'http.js');
  let http = readFileSync(httpPath, 'utf8');
  for (const [from, to] of patches) {
    if (!http.includes(from)) {
      console.error(`build.mjs: preview2-shim's http.js has changed: no ${JSON.stringify(from)}`);
      process.exit(1);
    }
    http = http.replace(from, to);
  }
  http += '\nexport { responseOutparamCreate as _keygateResponseOutparamCreate, incomingRequestCreate as _keygateIncomingRequestCreate };\n';
  writeFileSync(httpPath, http);
}

// Into the cache, whole or not at all (exports running side by side may race for it).
const partial = `${cache}.${process.pid}.partial`;
try {
  for (const output of outputs) cpSync(join(here, output), join(partial, output), { recursive: true });
  renameSync(partial, cache);
} catch {
  rmSync(partial, { recursive: true, force: true });
}
