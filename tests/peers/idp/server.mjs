// Test-only OpenID Provider for mcp-guard end-to-end tests.
//
// Wraps the certified `oidc-provider` package and issues RFC 9068 JWT access
// tokens through the client_credentials grant with RFC 8707 resource
// indicators: `aud` is the requested `resource`. Extra test-control endpoints
// live under /_test/ on the same port (see README.md).
//
// Usage: node server.mjs --port N [--issuer URL] [--default-resource URL]
//                        [--resource-hosts host1,host2] [--ttl SECONDS]
//   --port 0 picks a free port (reported in the READY line).
//   (env equivalents: PORT, ISSUER, DEFAULT_RESOURCE, RESOURCE_HOSTS, TOKEN_TTL)
//
// stdout carries exactly one line, `READY <port>`, once listening; every other
// message (including oidc-provider's own notices) goes to stderr.
//
// NEVER use this outside tests: client secrets are hard-coded and the signing
// keys are ephemeral.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

// oidc-provider prints notices via console.info (stdout). Keep stdout for the
// READY line only so the harness can parse it reliably.
console.info = console.error;
console.log = console.error;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    issuer: { type: 'string' },
    'default-resource': { type: 'string' },
    'resource-hosts': { type: 'string' },
    ttl: { type: 'string' },
  },
});

const HOST = '127.0.0.1';
const PORT = Number.parseInt(args.port ?? process.env.PORT ?? '', 10);
if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) {
  console.error('usage: node server.mjs --port N [--issuer URL] [--default-resource URL]'
    + ' [--resource-hosts h1,h2] [--ttl SECONDS]');
  process.exit(2);
}
// With --port 0 the OS picks the port, so the default issuer (which embeds
// the port) is only known once listening; see server.listen below.
let ISSUER = args.issuer ?? process.env.ISSUER;
const DEFAULT_RESOURCE = args['default-resource'] ?? process.env.DEFAULT_RESOURCE;
const TOKEN_TTL = Number.parseInt(args.ttl ?? process.env.TOKEN_TTL ?? '300', 10);

// Hosts accepted in `resource` values (any scheme http/https, any port, any path).
const RESOURCE_HOSTS = new Set([
  '127.0.0.1',
  'localhost',
  '[::1]',
  ...(args['resource-hosts'] ?? process.env.RESOURCE_HOSTS ?? '')
    .split(',').map((h) => h.trim().toLowerCase()).filter(Boolean),
]);

// Every scope any resource server (MCP server) understands.
const MCP_SCOPES = ['mcp:tools', 'mcp:read', 'mcp:write', 'mcp:admin'];

// TEST-ONLY client credentials. These are not secrets; they exist so the e2e
// suite can obtain tokens. `groups` is copied into every access token.
const TEST_CLIENTS = [
  {
    client_id: 'sales-agent',
    client_secret: 'test-only-sales-agent-secret',
    scope: 'mcp:tools mcp:read',
    groups: ['sales'],
  },
  {
    client_id: 'eng-agent',
    client_secret: 'test-only-eng-agent-secret',
    scope: 'mcp:tools mcp:read mcp:write',
    groups: ['engineering', 'oncall'],
  },
  {
    client_id: 'readonly-agent',
    client_secret: 'test-only-readonly-agent-secret',
    scope: 'mcp:read',
    groups: [],
  },
  {
    client_id: 'admin-agent',
    client_secret: 'test-only-admin-agent-secret',
    scope: MCP_SCOPES.join(' '),
    groups: ['admins', 'engineering'],
  },
];
const GROUPS_BY_CLIENT = new Map(TEST_CLIENTS.map((c) => [c.client_id, c.groups]));

// TEST-ONLY clients beyond the agents above:
// - `mcp-guard`, the resource server's own client, which calls the introspection endpoint
//   (client_secret_basic, or client_secret_post as `mcp-guard-post`);
// - `mtls-agent`, whose access tokens are bound to its TLS client certificate (RFC 8705).
//   This IdP listens on plain HTTP: the token request carries the client certificate (PEM,
//   URL-encoded) in the `x-client-cert` header, as a TLS-terminating proxy would forward it.
const EXTRA_CLIENTS = [
  {
    client_id: 'mcp-guard',
    client_secret: 'test-only-mcp-guard-secret',
    scope: 'mcp:read',
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    client_id: 'mcp-guard-post',
    client_secret: 'test-only-mcp-guard-post-secret',
    scope: 'mcp:read',
    token_endpoint_auth_method: 'client_secret_post',
  },
  {
    client_id: 'mtls-agent',
    client_secret: 'test-only-mtls-agent-secret',
    scope: 'mcp:tools mcp:read',
    tls_client_certificate_bound_access_tokens: true,
  },
];
GROUPS_BY_CLIENT.set('mtls-agent', ['sales']);

// Calls to the introspection endpoint, for the tests (/_test/introspection-hits).
let introspectionHits = 0;

// JWS algorithms a token request may select with the non-standard
// `token_alg` parameter (default RS256).
const SUPPORTED_ALGS = new Set(['RS256', 'ES256']);

// ---------------------------------------------------------------------------
// Signing keys
// ---------------------------------------------------------------------------

let keyGeneration = 0;

// Fresh RS256 + ES256 private JWKs with new, unique kids.
function generateSigningKeys() {
  keyGeneration += 1;
  const suffix = `${keyGeneration}-${crypto.randomBytes(4).toString('hex')}`;
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  return [
    { ...rsa.export({ format: 'jwk' }), kid: `rs256-${suffix}`, alg: 'RS256', use: 'sig' },
    { ...ec.export({ format: 'jwk' }), kid: `es256-${suffix}`, alg: 'ES256', use: 'sig' },
  ];
}

// ---------------------------------------------------------------------------
// Provider
// ---------------------------------------------------------------------------

function isAcceptedResource(resource) {
  const url = URL.parse(resource);
  return url !== null
    && (url.protocol === 'http:' || url.protocol === 'https:')
    && RESOURCE_HOSTS.has(url.hostname.toLowerCase());
}

function buildProvider(jwks) {
  const provider = new Provider(ISSUER, {
    jwks: { keys: jwks },
    clients: [...TEST_CLIENTS, ...EXTRA_CLIENTS].map(({ groups, ...client }) => ({
      token_endpoint_auth_method: 'client_secret_basic',
      ...client,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    })),
    // Scopes must be registered statically, otherwise the per-client scope
    // allow-list is not enforced.
    scopes: ['openid', ...MCP_SCOPES],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // RFC 7662 and RFC 7009, for opaque tokens and revocation.
      introspection: { enabled: true },
      revocation: { enabled: true },
      // RFC 9449 (DPoP-bound tokens: a token request with a DPoP proof gets cnf.jkt).
      dPoP: { enabled: true },
      // RFC 8705 certificate-bound tokens (cnf.x5t#S256), the certificate from x-client-cert.
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        getCertificate(ctx) {
          const pem = ctx.get('x-client-cert');
          return pem ? decodeURIComponent(pem) : undefined;
        },
      },
      resourceIndicators: {
        enabled: true,
        // With no `resource` parameter the token would be opaque (no `aud`);
        // fail loudly instead unless a default was configured.
        async defaultResource(ctx) {
          if (DEFAULT_RESOURCE) return DEFAULT_RESOURCE;
          if (ctx.oidc.route === 'token') {
            throw new errors.InvalidTarget('resource parameter is required by this test IdP');
          }
          return undefined;
        },
        async getResourceServerInfo(ctx, resourceIndicator) {
          if (!isAcceptedResource(resourceIndicator)) {
            throw new errors.InvalidTarget(`resource not accepted by this test IdP: ${resourceIndicator}`);
          }
          // Non-standard test knobs `token_alg` / `token_ttl` in the token
          // request body. oidc-provider drops unknown token-endpoint params from
          // ctx.oidc.params (extraParams only covers /auth), so read the parsed
          // form body instead.
          const extra = ctx.oidc.body ?? {};
          const alg = extra.token_alg ?? 'RS256';
          if (!SUPPORTED_ALGS.has(alg)) {
            throw new errors.InvalidRequest(`unsupported token_alg: ${alg}`);
          }
          // `token_format=opaque`: an opaque (reference) access token, only usable through
          // introspection.
          const format = extra.token_format ?? 'jwt';
          if (format !== 'jwt' && format !== 'opaque') {
            throw new errors.InvalidRequest(`unsupported token_format: ${format}`);
          }
          const ttl = extra.token_ttl !== undefined
            ? Number.parseInt(extra.token_ttl, 10)
            : TOKEN_TTL;
          if (!Number.isInteger(ttl) || ttl <= 0) {
            throw new errors.InvalidRequest('token_ttl must be a positive integer');
          }
          return {
            scope: MCP_SCOPES.join(' '),
            audience: resourceIndicator,
            accessTokenTTL: ttl,
            accessTokenFormat: format,
            jwt: { sign: { alg } },
          };
        },
      },
    },
    async extraTokenClaims(ctx, token) {
      const groups = GROUPS_BY_CLIENT.get(token.clientId);
      return groups ? { groups } : undefined;
    },
    ttl: {
      // Resource-server TTL (above) wins; these only silence default-value notices.
      AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? TOKEN_TTL,
      ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? TOKEN_TTL,
    },
  });
  provider.on('server_error', (ctx, err) => console.error('oidc-provider server_error:', err));
  return provider;
}

// The keystore of an oidc-provider instance is fixed at construction, so key
// rotation builds a brand-new Provider (same issuer and clients) and swaps
// the request handler. Tokens are stateless JWTs, so nothing is lost.
let currentKeys = generateSigningKeys();
let handler; // set once listening (the issuer may depend on the bound port)

function publicKids() {
  return currentKeys.map((k) => k.kid);
}

// ---------------------------------------------------------------------------
// HTTP server: /_test/* control endpoints, everything else -> oidc-provider
// ---------------------------------------------------------------------------

// Matches the `jwks_uri` advertised in discovery (oidc-provider default route).
const JWKS_PATH = '/jwks';
let jwksHits = 0;

function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(data),
    'cache-control': 'no-store',
  });
  res.end(data);
}

function handleTest(req, res, path) {
  const route = `${req.method} ${path}`;
  switch (route) {
    case 'POST /_test/rotate': {
      currentKeys = generateSigningKeys();
      handler = buildProvider(currentKeys).callback();
      console.error(`rotated signing keys, kids now: ${publicKids().join(', ')}`);
      return sendJson(res, 200, { kids: publicKids() });
    }
    case 'GET /_test/jwks-hits':
      return sendJson(res, 200, { count: jwksHits });
    case 'POST /_test/reset-hits':
      jwksHits = 0;
      return sendJson(res, 200, { count: 0 });
    case 'GET /_test/introspection-hits':
      return sendJson(res, 200, { count: introspectionHits });
    case 'GET /_test/kids':
      return sendJson(res, 200, { kids: publicKids() });
    default:
      return sendJson(res, 404, { error: `unknown test endpoint: ${route}` });
  }
}

const server = http.createServer((req, res) => {
  const path = (req.url ?? '/').split('?', 1)[0];
  if (path.startsWith('/_test/')) {
    // Drain any request body; control endpoints take no input.
    req.resume();
    return handleTest(req, res, path);
  }
  if (path === JWKS_PATH && req.method === 'GET') {
    jwksHits += 1;
  }
  if (path === '/token/introspection') {
    introspectionHits += 1;
  }
  return handler(req, res);
});

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  ISSUER ??= `http://${HOST}:${port}`;
  handler = buildProvider(currentKeys).callback();
  console.error(`test IdP issuer=${ISSUER} kids=${publicKids().join(',')}`);
  process.stdout.write(`READY ${port}\n`);
});

function shutdown(signal) {
  console.error(`received ${signal}, shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  // Safety net in case a connection refuses to close.
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
