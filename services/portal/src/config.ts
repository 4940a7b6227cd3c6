// What the portal is pointed at, read from /config.json next to the page: the city's node
// (its web listener, gRPC-Web) and the city's identity provider (OpenID Connect). A real
// deployment swaps the identity provider by changing this file only.

export interface PortalConfig {
  /** The city the portal serves (its citizens sign in there). */
  city: string;
  /** The node's web listener, e.g. http://127.0.0.1:7080 */
  webUrl: string;
  authorizationEndpoint: string;
  tokenEndpoint: string;
  clientId: string;
  redirectUri: string;
  /** Cities of the federation, for the consent form. */
  cities: string[];
}

export async function loadConfig(): Promise<PortalConfig> {
  const resp = await fetch("config.json", { cache: "no-store" });
  if (!resp.ok) throw new Error(`config.json: ${resp.status}`);
  return (await resp.json()) as PortalConfig;
}
