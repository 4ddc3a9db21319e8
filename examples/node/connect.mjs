// What both example clients need to reach the services: the protos loaded as they are (no
// generated code), the TLS credentials and token a service may require, and the way a failed
// call is reported.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const PROTOS = fileURLToPath(new URL('../../protos/', import.meta.url));

// The specdec.v1 package: ids and counts as Numbers, enums by name (FINISH_REASON_LENGTH).
export function loadApi() {
  const definition = protoLoader.loadSync('specdec_rpc/v1/specdec.proto', {
    includeDirs: [PROTOS], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).specdec.v1;
}

// The flags of the Python client's: --tls-ca (plus --tls-cert/--tls-key for mutual TLS), and
// --auth-token, by default $SPECDEC_AUTH_TOKEN as the services read theirs.
export const SECURITY_OPTIONS = {
  'tls-ca': { type: 'string' }, 'tls-cert': { type: 'string' }, 'tls-key': { type: 'string' },
  'auth-token': { type: 'string', default: process.env.SPECDEC_AUTH_TOKEN },
};

export function channelCredentials(args) {
  const pem = (path) => (path ? readFileSync(path) : null);
  return args['tls-ca'] ? grpc.credentials.createSsl(pem(args['tls-ca']), pem(args['tls-key']), pem(args['tls-cert']))
    : grpc.credentials.createInsecure();
}

export function authMetadata(args) {
  const metadata = new grpc.Metadata();
  if (args['auth-token']) metadata.set('authorization', `Bearer ${args['auth-token']}`);
  return metadata;
}

export function unary(client, method, request, metadata, timeoutS = 30) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + timeoutS * 1000 },
      (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

export async function info(client, metadata) {
  await new Promise((resolve, reject) =>
    client.waitForReady(Date.now() + 30_000, (err) => (err ? reject(err) : resolve())));
  return unary(client, 'Info', {}, metadata);
}

// A gRPC error as the service stated it (e.g. "UNAUTHENTICATED: ..."), exit status 1.
export function exitWithError(err) {
  const code = err.code !== undefined ? `${grpc.status[err.code]}: ` : '';
  console.error(`error: ${code}${err.details || err.message}`);
  process.exit(1);
}
