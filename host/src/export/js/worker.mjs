// keygate's gateway component as a workerd (Cloudflare Workers) module Worker. Written by
// `keygate export --for workerd`; config.capnp lists it with the modules it imports.
//
// workerd has no WASI 0.2 host of its own: jco transpiled the component to JavaScript with
// JSPI (its blocking WASI calls suspend on promises), and @bytecodealliance/preview2-shim's
// Web shims (shim/) implement WASI over fetch and Web streams. Each request gets a fresh
// gateway instance; the key-cache and counters adapters are instantiated once per isolate, in
// this module's scope, so verdicts and rate-limit counts outlive a request (per isolate: a
// deployment with several isolates keeps one cache and one set of counts in each).
import { coreModules } from './transpiled/modules.mjs';
import * as cli from './shim/cli.js';
import * as clocks from './shim/clocks.js';
import * as http from './shim/http.js';
import * as io from './shim/io.js';
import * as random from './shim/random.js';
import { instantiate as instantiateGateway } from './transpiled/gateway.js';
import { instantiate as instantiateKeyCache } from './transpiled/key-cache.js';
import { instantiate as instantiateCounters } from './transpiled/counters.js';

// preview2-shim 0.26.1's blockingSplice does not wait for an input stream whose blockingRead
// returns a promise (a fetch body under JSPI), and writes the promise: wait for it.
io.streams.OutputStream.prototype.blockingSplice = function (src, len) {
  const spliceLen = Math.min(Number(len), Number(this.checkWrite()));
  const finish = (bytes) => {
    this.write(bytes);
    return BigInt(bytes.byteLength);
  };
  const bytes = src.blockingRead(BigInt(spliceLen));
  return bytes instanceof Promise ? bytes.then(finish) : finish(bytes);
};

const wasi = {
  'wasi:cli/environment': cli.environment,
  'wasi:cli/exit': cli.exit,
  'wasi:cli/stderr': cli.stderr,
  'wasi:cli/stdin': cli.stdin,
  'wasi:cli/stdout': cli.stdout,
  'wasi:cli/terminal-input': cli.terminalInput,
  'wasi:cli/terminal-output': cli.terminalOutput,
  'wasi:cli/terminal-stderr': cli.terminalStderr,
  'wasi:cli/terminal-stdin': cli.terminalStdin,
  'wasi:cli/terminal-stdout': cli.terminalStdout,
  'wasi:clocks/monotonic-clock': clocks.monotonicClock,
  'wasi:clocks/wall-clock': clocks.wallClock,
  'wasi:http/outgoing-handler': http.outgoingHandler,
  'wasi:http/types': http.types,
  'wasi:io/error': io.error,
  'wasi:io/poll': io.poll,
  'wasi:io/streams': io.streams,
  'wasi:random/insecure': random.insecure,
  'wasi:random/insecure-seed': random.insecureSeed,
  'wasi:random/random': random.random,
};
const getCoreModule = (name) => {
  const module = coreModules.get(name);
  if (!module) throw new Error(`keygate: no core module ${name} in transpiled/modules.mjs`);
  return module;
};

// The isolate's state: the adapters' instances, made on the first request (a Worker may not
// do this work at load).
let isolate;
function isolateState(env) {
  isolate ??= (async () => {
    // The component sees this environment only, as on the other hosts.
    cli._setEnv({ KEYGATE_CONFIG: env.KEYGATE_CONFIG });
    cli._setArgs(['gateway']);
    // Outgoing requests go to the config's origins and auth API only (the socket's network
    // service in config.capnp allows their addresses too).
    const allowed = new Set(JSON.parse(env.KEYGATE_OUTBOUND).map((url) => new URL(url).origin));
    const fetch = globalThis.fetch;
    globalThis.fetch = (input, init) => {
      const url = new URL(input instanceof Request ? input.url : String(input));
      if (!allowed.has(url.origin)) {
        return Promise.reject(new TypeError(`keygate: outgoing request to ${url.origin} is not allowed`));
      }
      return fetch(input, init);
    };
    const keyCache = await instantiateKeyCache(getCoreModule, wasi);
    const counters = await instantiateCounters(getCoreModule, wasi);
    return {
      imports: {
        ...wasi,
        'keygate:gateway/key-cache': keyCache.keyCache,
        'keygate:gateway/counters': counters.counters,
      },
    };
  })();
  // A failed start is tried again by the next request.
  isolate.catch(() => {
    isolate = undefined;
  });
  return isolate;
}

export default {
  async fetch(request, env) {
    try {
      const { imports } = await isolateState(env);
      const gateway = await instantiateGateway(getCoreModule, imports);
      return await http.handleIncomingRequest(request, (incoming, out) =>
        gateway.incomingHandler.handle(incoming, out),
      );
    } catch (error) {
      console.error('keygate: the gateway component failed:', error?.stack ?? String(error));
      return new Response('{\n  "message":"An unexpected error occurred"\n}', {
        status: 500,
        headers: { 'content-type': 'application/json; charset=utf-8' },
      });
    }
  },
};
