// Serves keygate's gateway component on Node.js: `node server.mjs ADDR` (run by serve.sh).
// Written by `keygate export --for node`.
//
// gateway/gateway.js is the component transpiled by jco; @bytecodealliance/preview2-shim
// provides WASI 0.2 on Node (incoming requests through node:http, outgoing ones through
// node:http on a worker thread). One instance serves every request, one at a time, so the
// key cache and the rate-limit counters plugged into gateway.wasm last as long as the process.
import { _setArgs, _setEnv } from '@bytecodealliance/preview2-shim/cli';
import { HTTPServer, types } from '@bytecodealliance/preview2-shim/http';

const [addr] = process.argv.slice(2);
const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(addr ?? '');
if (!match) {
  console.error(`usage: node server.mjs HOST:PORT   (e.g. 127.0.0.1:8080), not ${JSON.stringify(addr)}`);
  process.exit(2);
}
const host = match[1] ?? match[2];
const port = Number(match[3]);
const config = process.env.KEYGATE_CONFIG;
if (!config) {
  console.error('server.mjs: KEYGATE_CONFIG is not set (serve.sh sets it)');
  process.exit(2);
}
// The component sees this environment only, as on the other hosts.
_setEnv({ KEYGATE_CONFIG: config });
_setArgs(['gateway']);

// preview2-shim 0.26.1 applies a request's first-byte timeout only once the response head has
// arrived, and its connect timeout as the socket's idle timeout, which covers the wait for
// the head too: hand it the smaller of both, so an origin slower than read_timeout gets 504.
const options = types.RequestOptions.prototype;
const { connectTimeout, firstByteTimeout } = options;
options.connectTimeout = function () {
  const connect = connectTimeout.call(this);
  const firstByte = firstByteTimeout.call(this);
  return firstByte !== undefined && (connect === undefined || firstByte < connect) ? firstByte : connect;
};

const { incomingHandler } = await import('./gateway/gateway.js');
const server = new HTTPServer(incomingHandler);
server.listen(port, host);
const bound = server.address();
const shown = host.includes(':') ? `[${host}]` : host;
console.error(`Serving HTTP on http://${shown}:${bound?.port ?? port}/`);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.stop();
    process.exit(0);
  });
}
