// Prints "ACCESS REFRESH" for a fresh OAuth token pair from a control plane,
// obtained with the extension RPC cmdop.ext.v1.Cmdop/IssueToken (authorised
// by an API key). libcmdop only consumes tokens, so the auth test gets them
// here. Uses the gRPC packages installed for the Node interop test.
//
//   node tests/c/issue_tokens.cjs HOST:PORT API_KEY ACCESS_TTL_SECONDS
'use strict';
const path = require('path');
const { createRequire } = require('module');

const root = path.resolve(__dirname, '..', '..');
const nodeRequire = createRequire(path.join(root, 'tests', 'interop', 'node', 'package.json'));
const grpc = nodeRequire('@grpc/grpc-js');
const protoLoader = nodeRequire('@grpc/proto-loader');

const [server, apiKey, ttl] = process.argv.slice(2);
if (!server || !apiKey) {
  console.error('usage: node tests/c/issue_tokens.cjs HOST:PORT API_KEY [ACCESS_TTL_SECONDS]');
  process.exit(2);
}
const definition = protoLoader.loadSync(path.join(root, 'proto', 'cmdop_ext.proto'), { keepCase: true, longs: String });
const { Cmdop } = grpc.loadPackageDefinition(definition).cmdop.ext.v1;
const client = new Cmdop(server, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
metadata.set('authorization', `Bearer ${apiKey}`);
client.IssueToken({ access_ttl_seconds: Number(ttl || 0) }, metadata, { deadline: Date.now() + 10000 }, (err, pair) => {
  client.close();
  if (err) {
    console.error(`IssueToken failed: ${err.message}`);
    process.exit(1);
  }
  console.log(`${pair.access_token} ${pair.refresh_token}`);
});
