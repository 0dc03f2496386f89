// A Node.js app the gateway runs in the tests (`[app.web]`): it listens on PORT, says
// which INSTANCE it is, and has paths to make it slow, grow, crash or print.
const http = require('http');
const crypto = require('crypto');

const port = Number(process.env.PORT);
const instance = process.env.INSTANCE;
const greeting = process.env.GREETING || 'hello';
const readyAt = Date.now() + Number(process.env.READY_AFTER_MS || 0);
const hog = [];

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://app');
  switch (url.pathname) {
    case '/healthz':
      res.statusCode = Date.now() >= readyAt ? 200 : 503;
      res.end();
      return;
    case '/slow':
      setTimeout(() => res.end(`slow from ${instance} ${process.pid}\n`), Number(url.searchParams.get('ms') || 1000));
      return;
    case '/grow': {
      const chunk = Buffer.alloc(64 << 20, 1);
      hog.push(chunk);
      res.end(`grew to ${hog.length * 64} MiB\n`);
      return;
    }
    case '/crash':
      process.exit(3);
      return;
    case '/print':
      console.log(url.searchParams.get('line'));
      console.error(`stderr ${url.searchParams.get('line')}`);
      res.end('printed\n');
      return;
    default:
      res.end(`${greeting} from instance ${instance} pid ${process.pid} port ${port}\n`);
  }
});

// A WebSocket handshake, then every byte echoed: enough for the gateway's tunnel.
server.on('upgrade', (req, socket) => {
  const accept = crypto
    .createHash('sha1')
    .update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
    .digest('base64');
  socket.write(
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      `Sec-WebSocket-Accept: ${accept}\r\n\r\n`
  );
  socket.on('data', (data) => socket.write(data));
});

server.listen(port, process.env.HOST || '127.0.0.1', () => console.log(`instance ${instance} listening on ${port}`));

// Graceful on SIGTERM (the gateway's) and SIGINT (PM2's): finish what is in flight,
// then exit. With GRACEFUL=0, Node's default: exit at once.
for (const signal of process.env.GRACEFUL === '0' ? [] : ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    console.log(`instance ${instance} got ${signal}`);
    server.close(() => process.exit(0));
    server.closeIdleConnections();
  });
}
