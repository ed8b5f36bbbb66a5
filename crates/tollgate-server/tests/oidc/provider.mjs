// A real OpenID provider for Tollgate's integration tests: the npm package oidc-provider.
//   node provider.mjs <port> <client_id> <client_secret> <redirect_uris, comma-separated> <accounts.json>
// accounts.json maps a login to its claims: {"alice": {"sub": "alice", "email": ..., "email_verified": true, "name": ...}}.
// Sign-in is headless: POST prompt=login&login=<login>&password=x to the interaction URL, then
// prompt=consent (oidc-provider's development interactions).
import Provider from 'oidc-provider';
import { readFileSync } from 'node:fs';

const [port, clientId, clientSecret, redirectUris, accountsPath] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: redirectUris.split(','),
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  conformIdTokenClaims: false,
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    const accounts = JSON.parse(readFileSync(accountsPath, 'utf8'));
    const claims = accounts[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { ...claims, sub: id }; } };
  },
});
provider.listen(Number(port), '127.0.0.1', () => console.log(`listening ${issuer}`));
