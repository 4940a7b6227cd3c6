// The node's APIs over gRPC-Web (binary), with the citizen's token on every call. Errors
// become a message and, where the node or the provider named fields, the field violations
// (google.rpc.BadRequest in grpc-status-details-bin).

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { current } from "./auth.js";
import type { PortalConfig } from "./config.js";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb.js";
import { Audit } from "./gen/tongban/audit/v1/audit_pb.js";
import { BundleService } from "./gen/tongban/bundle/v1/bundle_pb.js";
import { Consent } from "./gen/tongban/consent/v1/consent_pb.js";
import { CrossCityService } from "./gen/tongban/crosscity/v2/crosscity_pb.js";
import { Registry } from "./gen/tongban/registry/v1/registry_pb.js";

export const CROSSCITY_V2 = "tongban.crosscity.v2.CrossCityService";
export const PURPOSE = "case-handling";

export interface Clients {
  registry: Client<typeof Registry>;
  consent: Client<typeof Consent>;
  audit: Client<typeof Audit>;
  crosscity: Client<typeof CrossCityService>;
  bundle: Client<typeof BundleService>;
}

const bearer: Interceptor = (next) => async (req) => {
  const s = current();
  if (s) req.header.set("authorization", `Bearer ${s.token}`);
  return await next(req);
};

export function clients(cfg: PortalConfig): Clients {
  const transport = createGrpcWebTransport({
    baseUrl: cfg.webUrl,
    useBinaryFormat: true,
    interceptors: [bearer],
  });
  return {
    registry: createClient(Registry, transport),
    consent: createClient(Consent, transport),
    audit: createClient(Audit, transport),
    crosscity: createClient(CrossCityService, transport),
    bundle: createClient(BundleService, transport),
  };
}

/** Metadata of a call about the signed-in citizen, routed to `city` (and `org`). */
export function about(city: string, opts: { org?: string; code?: string } = {}): Headers {
  const h = new Headers();
  const s = current();
  h.set("x-tongban-target-city", city);
  h.set("x-tongban-purpose", PURPOSE);
  if (s) h.set("x-tongban-subject", s.subject);
  if (opts.org) h.set("x-tongban-target-org", opts.org);
  if (opts.code) h.set("x-tongban-catalog-code", opts.code);
  return h;
}

export interface Failure {
  code: Code;
  message: string;
  /** field path → description, from google.rpc.BadRequest. */
  fields: Map<string, string>;
  unauthenticated: boolean;
}

export function failure(e: unknown): Failure {
  const err = ConnectError.from(e);
  const fields = new Map<string, string>();
  for (const bad of err.findDetails(BadRequestSchema)) {
    for (const v of bad.fieldViolations) fields.set(v.field, v.description);
  }
  return {
    code: err.code,
    message: err.rawMessage,
    fields,
    unauthenticated: err.code === Code.Unauthenticated,
  };
}
