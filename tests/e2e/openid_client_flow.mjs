// The authorization code flow as node's openid-client (v6) runs it against our server:
// discovery, PKCE S256, state, nonce, the RFC 9207 iss check, ID token validation,
// userinfo and a refresh. Usage: node openid_client_flow.mjs ISSUER CLIENT_ID SECRET
// REDIRECT_URI. Prints {"authorization_url"} and then reads the URL the browser was sent
// back to (one line on stdin); prints the result as one JSON line.
import * as client from 'openid-client';
import readline from 'node:readline';

const [issuer, clientId, clientSecret, redirectUri] = process.argv.slice(2);
// http on loopback in tests only: openid-client refuses plain http unless told.
const config = await client.discovery(new URL(issuer), clientId, clientSecret, undefined,
  { execute: [client.allowInsecureRequests] });
const verifier = client.randomPKCECodeVerifier();
const challenge = await client.calculatePKCECodeChallenge(verifier);
const state = client.randomState();
const nonce = client.randomNonce();
const url = client.buildAuthorizationUrl(config, {
  redirect_uri: redirectUri, scope: 'openid profile email', code_challenge: challenge,
  code_challenge_method: 'S256', state, nonce,
});
console.log(JSON.stringify({ authorization_url: url.href }));

const lines = readline.createInterface({ input: process.stdin });
const callback = await new Promise((resolve) => lines.once('line', resolve));
lines.close();
const tokens = await client.authorizationCodeGrant(config, new URL(callback), {
  pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce,
  idTokenExpected: true,
});
const claims = tokens.claims();
const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
let reused = null;
try {
  await client.authorizationCodeGrant(config, new URL(callback), {
    pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce,
  });
} catch (error) {
  reused = error.error ?? error.code ?? String(error);
}
console.log(JSON.stringify({
  claims, userinfo, scope: tokens.scope, token_type: tokens.token_type,
  refreshed: { scope: refreshed.scope, has_access_token: Boolean(refreshed.access_token) },
  reused,
}));
