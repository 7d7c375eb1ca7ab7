// A real OpenID provider for the tests: panva's oidc-provider (OpenID Certified), configured from a JSON file.
//
//   node tests/oidc/provider.mjs CONFIG.json      (oidc-provider from .ci/node_modules, which .ci/run installs)
//
// CONFIG: {issuer, port, jwks: {keys: [private JWKs]}, clients: [...], accounts: {login: {email, groups, team}},
// clientClaims: {client_id: {email, groups}}}. The first key signs; a restart with another `jwks` is a key
// rotation (tests/oidc/provider.py drives it). devInteractions gives the browser a login and a consent page.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const require = createRequire(pathToFileURL(process.argv[3] || './.ci/').href);
const { default: Provider } = await import(pathToFileURL(require.resolve('oidc-provider')).href);

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: config.jwks,
  cookies: { keys: ['tests-only-cookie-key'] },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups', 'team'] },
  scopes: ['openid', 'email', 'groups', 'api'],
  conformIdTokenClaims: false, // the ID token carries the scopes' claims (email, groups), as Keycloak's does
  pkce: { required: () => true },
  ttl: { AccessToken: 600, ClientCredentials: 600, IdToken: 600, Interaction: 600, Session: 600, Grant: 600 },
  findAccount: async (ctx, id) => {
    const account = config.accounts[id] || { email: `${id}@example.com`, groups: [] };
    return {
      accountId: id,
      claims: async () => ({ sub: id, email: account.email, email_verified: true, groups: account.groups, team: account.team }),
    };
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => undefined,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource) => ({
        scope: 'api',
        audience: resource,
        accessTokenFormat: 'jwt',
        accessTokenTTL: 600,
      }),
    },
  },
  extraTokenClaims: async (ctx, token) => (token.clientId in (config.clientClaims || {}) ? config.clientClaims[token.clientId] : undefined),
});
provider.listen(config.port, '127.0.0.1', () => console.log(`listening ${config.issuer}`));
