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
    const idle = readTimeouts(JSON.parse(env.KEYGATE_CONFIG));
    const fetch = globalThis.fetch;
    globalThis.fetch = async (input, init) => {
      const url = new URL(input instanceof Request ? input.url : String(input));
      if (!allowed.has(url.origin)) {
        throw new TypeError(`keygate: outgoing request to ${url.origin} is not allowed`);
      }
      return withIdleTimeout(await fetch(input, init), idle.get(url.origin));
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

// humantime durations as keygate writes them ("1m", "300ms", "1m 30s") in milliseconds.
function durationMs(text) {
  const units = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1e3, m: 6e4, h: 36e5, d: 864e5 };
  let total = 0;
  for (const part of String(text ?? '').trim().split(/\s+/)) {
    const match = /^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)$/.exec(part);
    if (!match) return undefined;
    total += Number(match[1]) * units[match[2]];
  }
  return total > 0 ? total : undefined;
}

// The longest time an origin (its services' read_timeout) or the auth API (its timeout) may
// go quiet mid-body, by origin: preview2-shim times out the response head only.
function readTimeouts(config) {
  const timeouts = new Map();
  const add = (url, text) => {
    const ms = durationMs(text);
    if (!ms) return;
    const origin = new URL(url.replace('{key}', 'k')).origin;
    timeouts.set(origin, Math.max(timeouts.get(origin) ?? 0, ms));
  };
  for (const service of config.services ?? []) add(service.url, service.read_timeout);
  if (config.auth_api) add(config.auth_api.url, config.auth_api.timeout);
  return timeouts;
}

// `response` whose body errors when no bytes arrive for `ms`.
function withIdleTimeout(response, ms) {
  if (!response.body || !ms) return response;
  const reader = response.body.getReader();
  const body = new ReadableStream({
    async pull(controller) {
      let timer;
      const quiet = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('keygate: the origin went quiet (read_timeout)')), ms);
      });
      try {
        const { done, value } = await Promise.race([reader.read(), quiet]);
        if (done) controller.close();
        else controller.enqueue(value);
      } catch (error) {
        reader.cancel(error).catch(() => {});
        controller.error(error);
      } finally {
        clearTimeout(timer);
      }
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
  return new Response(body, response);
}

// The response as workerd sends it: a body the component announced with Content-Length goes
// out with that length (a FixedLengthStream), not chunked.
function sized(request, response) {
  const length = Number(response.headers.get('content-length'));
  if (request.method === 'HEAD' || !response.body || !Number.isSafeInteger(length) || length < 0) {
    return response;
  }
  const fixed = new FixedLengthStream(length);
  response.body.pipeTo(fixed.writable).catch(() => {});
  return new Response(fixed.readable, response);
}

export default {
  async fetch(request, env, ctx) {
    try {
      const { imports } = await isolateState(env);
      const gateway = await instantiateGateway(getCoreModule, imports);
      const body = request.body ? new Uint8Array(await request.clone().arrayBuffer()) : new Uint8Array();
      const [out, response] = http._keygateResponseOutparamCreate();
      const incoming = http._keygateIncomingRequestCreate(request, body);
      // The response goes out as soon as the component sets it; its body streams while the
      // handler goes on writing it.
      const handled = Promise.resolve().then(() => gateway.incomingHandler.handle(incoming, out));
      ctx.waitUntil(
        handled.catch((error) => console.error('keygate: the gateway component failed:', error?.stack ?? String(error))),
      );
      const first = await Promise.race([
        response.then((value) => ({ response: value })),
        handled.then(
          () => ({}),
          (error) => ({ error }),
        ),
      ]);
      if (first.error) throw first.error;
      if (first.response) return sized(request, first.response);
      // The handler returned: a response it set is being converted; none is an error.
      const set = await Promise.race([response, new Promise((resolve) => setTimeout(resolve, 0))]);
      if (!set) throw new Error('the gateway component set no response');
      return sized(request, set);
    } catch (error) {
      console.error('keygate: the gateway component failed:', error?.stack ?? String(error));
      return new Response('{\n  "message":"An unexpected error occurred"\n}', {
        status: 500,
        headers: { 'content-type': 'application/json; charset=utf-8' },
      });
    }
  },
};
