// Citizen sign-in: OpenID Connect's authorization-code flow with PKCE (S256), as a public
// client. The access token lives in this module's memory only (never localStorage): a
// reload signs the citizen out. Only the PKCE verifier and the state cross the redirect,
// in sessionStorage, and are removed as soon as they are used.

import type { PortalConfig } from "./config.js";

export interface Session {
  token: string;
  /** The resident id (`sub`): the citizen's own subject. */
  subject: string;
  city: string;
  expiresAt: number;
}

let session: Session | null = null;

export function current(): Session | null {
  return session;
}

export function signOut(): void {
  session = null;
}

function b64url(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function random(n: number): string {
  const b = new Uint8Array(n);
  crypto.getRandomValues(b);
  return b64url(b);
}

async function challengeOf(verifier: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return b64url(new Uint8Array(digest));
}

/** Sends the browser to the identity provider's sign-in page. */
export async function signIn(cfg: PortalConfig): Promise<void> {
  const verifier = random(32);
  const state = random(16);
  sessionStorage.setItem("pkce", JSON.stringify({ verifier, state }));
  const q = new URLSearchParams({
    response_type: "code",
    client_id: cfg.clientId,
    redirect_uri: cfg.redirectUri,
    scope: "openid",
    state,
    code_challenge: await challengeOf(verifier),
    code_challenge_method: "S256",
  });
  location.assign(`${cfg.authorizationEndpoint}?${q}`);
}

function claimsOf(token: string): Record<string, unknown> {
  const part = token.split(".")[1] ?? "";
  const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
  const bytes = Uint8Array.from(json, (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes)) as Record<string, unknown>;
}

/**
 * On the redirect back: exchanges the code for a token (checking the state), and removes
 * the code from the address bar. Returns an error message, or null.
 */
export async function completeSignIn(cfg: PortalConfig): Promise<string | null> {
  const params = new URLSearchParams(location.search);
  const code = params.get("code");
  if (!code) return null;
  const saved = sessionStorage.getItem("pkce");
  sessionStorage.removeItem("pkce");
  history.replaceState(null, "", location.pathname);
  if (!saved) return "sign-in was not started here";
  const { verifier, state } = JSON.parse(saved) as { verifier: string; state: string };
  if (params.get("state") !== state) return "sign-in state does not match";
  const resp = await fetch(cfg.tokenEndpoint, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code,
      redirect_uri: cfg.redirectUri,
      client_id: cfg.clientId,
      code_verifier: verifier,
    }),
  });
  const body = (await resp.json()) as Record<string, unknown>;
  if (!resp.ok || typeof body.access_token !== "string") {
    return String(body.error_description ?? body.error ?? `token endpoint answered ${resp.status}`);
  }
  const claims = claimsOf(body.access_token);
  session = {
    token: body.access_token,
    subject: String(claims.sub ?? ""),
    city: String(claims.city ?? cfg.city),
    expiresAt: Number(claims.exp ?? 0) * 1000,
  };
  return null;
}

/** For tests of an expired session: replaces the token (kept in memory only). */
export function useToken(token: string): void {
  const claims = claimsOf(token);
  session = {
    token,
    subject: String(claims.sub ?? ""),
    city: String(claims.city ?? ""),
    expiresAt: Number(claims.exp ?? 0) * 1000,
  };
}
