// The reference citizens' portal: a citizen of the portal's city signs in, applies for a
// cross-city service (the form generated from the catalog's field definitions, the
// provider's own validation messages shown at each field), follows it live (server
// streaming over gRPC-Web), downloads the certificate, manages consents and sees who
// accessed their data. Plain DOM, no framework: every control is a native element with a
// label, reachable by keyboard.

import { current, completeSignIn, signIn, signOut, useToken } from "./auth.js";
import { about, clients, CROSSCITY_V2, failure, PURPOSE, type Clients, type Failure } from "./api.js";
import { loadConfig, type PortalConfig } from "./config.js";
import { cityName, purposeName, t, toggleLang } from "./i18n.js";
import type { CatalogItem } from "./gen/tongban/registry/v1/registry_pb.js";
import { State, type Application } from "./gen/tongban/crosscity/v2/crosscity_pb.js";
import { BundleState, ItemState, type BundleDefinition, type BundleStatus } from "./gen/tongban/bundle/v1/bundle_pb.js";
import { Code } from "@connectrpc/connect";

type Tab = "services" | "applications" | "bundles" | "consents" | "access";

let cfg: PortalConfig;
let api: Clients;
let tab: Tab = "services";
let items: CatalogItem[] = [];
let notice: { kind: "error" | "info"; text: string } | null = null;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string | null)[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) if (c !== null) e.append(c);
  return e;
}

function main(): HTMLElement {
  return document.getElementById("main") as HTMLElement;
}

function stateName(s: State): string {
  return t().states[`STATE_${State[s]}`] ?? State[s];
}

/** The catalog items, loaded once. */
async function catalogItems(): Promise<CatalogItem[]> {
  if (items.length === 0) items = (await api.registry.listCatalogItems({})).items;
  return items;
}

/** An item's name in the page's language, with its code. */
function itemName(code: string): string {
  const item = items.find((i) => i.code === code);
  if (!item) return code;
  return `${document.documentElement.lang === "en" ? item.nameEn : item.nameZh} (${code})`;
}

function when(ms: bigint | number): string {
  const n = Number(ms);
  return n > 0 ? new Date(n).toLocaleString(document.documentElement.lang) : "";
}

/** Shows a failure; an expired or refused token sends the citizen back to sign-in. */
function show(f: Failure): void {
  if (f.unauthenticated) {
    signOut();
    notice = { kind: "error", text: `${t().sessionExpired} (${f.message})` };
  } else {
    notice = { kind: "error", text: `${t().error}: ${f.message}` };
  }
  render();
}

function header(): HTMLElement {
  const s = current();
  const lang = el("button", { type: "button", id: "lang", "aria-label": t().langLabel }, t().lang);
  lang.onclick = () => {
    toggleLang();
    render();
  };
  const right = el("div", { class: "who" }, lang);
  if (s) {
    const out = el("button", { type: "button", id: "sign-out" }, t().signOut);
    out.onclick = () => {
      signOut();
      render();
    };
    right.prepend(el("span", { id: "who" }, `${t().signedInAs}: ${s.subject.slice(0, 6)}********${s.subject.slice(-4)}`), out);
  }
  return el("header", {}, el("h1", {}, t().title), right);
}

function nav(): HTMLElement {
  const tabs: [Tab, string][] = [
    ["services", t().tabServices],
    ["applications", t().tabApplications],
    ["bundles", t().tabBundles],
    ["consents", t().tabConsents],
    ["access", t().tabAccess],
  ];
  const list = el("ul", {});
  for (const [id, label] of tabs) {
    const b = el("button", { type: "button", id: `tab-${id}`, "aria-current": tab === id ? "page" : "false" }, label);
    b.onclick = () => {
      tab = id;
      notice = null;
      render();
    };
    list.append(el("li", {}, b));
  }
  return el("nav", { "aria-label": "sections" }, list);
}

function render(): void {
  const root = document.getElementById("app") as HTMLElement;
  document.title = t().title;
  root.replaceChildren(
    el("a", { href: "#main", class: "skip" }, t().skip),
    header(),
  );
  if (notice) {
    root.append(el("p", { class: notice.kind, role: notice.kind === "error" ? "alert" : "status", id: "notice" }, notice.text));
  }
  if (!current()) {
    const b = el("button", { type: "button", id: "sign-in", class: "primary" }, t().signIn);
    b.onclick = () => void signIn(cfg);
    root.append(el("main", { id: "main", tabindex: "-1" }, el("p", {}, t().welcome), b));
    return;
  }
  root.append(nav(), el("main", { id: "main", tabindex: "-1" }));
  switch (tab) {
    case "services":
      void services();
      break;
    case "applications":
      void applications();
      break;
    case "bundles":
      void bundles();
      break;
    case "consents":
      void consents();
      break;
    case "access":
      void access();
      break;
  }
}

// --- services and the application form ---

/** The city that handles an item for this citizen: the other city if it offers it. */
function handlingCity(item: CatalogItem): string | undefined {
  const other = item.offeredIn.find((c) => c !== cfg.city);
  return other ?? item.offeredIn[0];
}

async function services(): Promise<void> {
  const m = main();
  m.replaceChildren(el("h2", {}, t().tabServices), el("p", {}, t().servicesIntro));
  try {
    await catalogItems();
  } catch (e) {
    return show(failure(e));
  }
  const list = el("ul", { class: "items", id: "items" });
  for (const item of items) {
    const city = handlingCity(item);
    const name = document.documentElement.lang === "en" ? item.nameEn : item.nameZh;
    const b = el("button", { type: "button", id: `apply-${item.code}`, "aria-label": `${t().apply} ${item.code} ${name}` }, t().apply);
    b.disabled = !city;
    b.onclick = () => form(item);
    list.append(
      el(
        "li",
        {},
        el("span", { class: "code" }, item.code),
        el("span", { class: "name" }, name),
        el("span", { class: "meta" }, `${t().handledBy}: ${city ? cityName(city) : "—"}${item.personalData ? ` · ${t().personal}` : ""}`),
        b,
      ),
    );
  }
  m.append(list);
}

function form(item: CatalogItem): void {
  const m = main();
  const city = handlingCity(item);
  if (!city) return;
  const org = item.providers[city];
  const name = document.documentElement.lang === "en" ? item.nameEn : item.nameZh;
  const f = el("form", { id: "application-form", novalidate: "" });
  f.append(
    el("h2", {}, `${item.code} ${name}`),
    el("p", {}, `${t().handledBy}: ${cityName(city)} · ${t().timeLimit}: ${item.timeLimitDays} ${t().days}`),
  );
  for (const field of item.fields) {
    const id = `field-${field.name}`;
    const input = el("input", {
      id,
      name: field.name,
      type: field.type === "date" ? "date" : "text",
      placeholder: field.example,
      "aria-describedby": `${id}-hint ${id}-error`,
      autocomplete: "off",
    });
    if (field.required) input.setAttribute("aria-required", "true");
    f.append(
      el(
        "div",
        { class: "field" },
        el("label", { for: id }, `${field.name}${field.required ? ` (${t().required})` : ""}`),
        input,
        el("small", { id: `${id}-hint` }, `${field.validation} · ${t().example} ${field.example}`),
        el("span", { class: "field-error", id: `${id}-error`, role: "status" }),
      ),
    );
  }
  if (item.materials.length > 0) {
    const fs = el("fieldset", {}, el("legend", {}, t().materials));
    for (const kind of item.materials) {
      const id = `material-${kind}`;
      fs.append(el("div", { class: "field" }, el("label", { for: id }, kind), el("input", { id, name: kind, type: "file" })));
    }
    f.append(fs);
  }
  const cancel = el("button", { type: "button" }, t().cancel);
  cancel.onclick = () => render();
  f.append(el("div", { class: "actions" }, el("button", { type: "submit", class: "primary", id: "submit" }, t().submit), cancel));
  f.onsubmit = (ev) => {
    ev.preventDefault();
    void submit(item, city, org, f);
  };
  m.replaceChildren(f);
  (f.querySelector("input") as HTMLInputElement | null)?.focus();
}

async function sha256Hex(file: File): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function submit(item: CatalogItem, city: string, org: string | undefined, f: HTMLFormElement): Promise<void> {
  const s = current();
  if (!s) return render();
  const fields: Record<string, string> = {};
  for (const field of item.fields) {
    const v = (f.querySelector(`#field-${CSS.escape(field.name)}`) as HTMLInputElement).value.trim();
    if (v !== "") fields[field.name] = v;
  }
  const materials = [];
  for (const kind of item.materials) {
    const file = (f.querySelector(`#material-${CSS.escape(kind)}`) as HTMLInputElement).files?.[0];
    if (file) materials.push({ kind, uri: `portal-upload:${encodeURIComponent(file.name)}`, sha256: await sha256Hex(file) });
  }
  for (const e of f.querySelectorAll(".field-error")) e.textContent = "";
  try {
    const app = await api.crosscity.submit(
      { catalogCode: item.code, applicantId: s.subject, fields, materials },
      { headers: about(city, { org, code: item.code }) },
    );
    void follow(app, city, org);
  } catch (e) {
    const fail = failure(e);
    if (fail.fields.size > 0) {
      // The provider's own messages, at the fields they name.
      for (const [path, why] of fail.fields) {
        const name = path.replace(/^fields\./, "");
        const target = f.querySelector(`#field-${CSS.escape(name)}-error`);
        if (target) target.textContent = why;
      }
      notice = { kind: "error", text: `${t().error}: ${fail.message}` };
      const n = document.getElementById("notice");
      if (n) n.textContent = notice.text;
      else f.prepend(el("p", { class: "error", role: "alert", id: "notice" }, notice.text));
      return;
    }
    show(fail);
  }
}

function applicationView(app: Application): HTMLElement {
  const box = el("section", { class: "application", id: `app-${app.applicationId}`, "aria-live": "polite" });
  box.append(
    el("h3", {}, `${app.catalogCode} · ${cityName(app.providerCity)}`),
    el("p", {}, `${t().status}: `, el("strong", { class: "state", "data-state": State[app.state] }, stateName(app.state))),
    el("p", {}, `${t().due}: ${app.dueDate}`),
  );
  if (app.state === State.REJECTED) box.append(el("p", { class: "error" }, `${t().rejected}: ${app.rejectionReason}`));
  const hist = el("ol", { class: "history" });
  for (const tr of app.history) hist.append(el("li", {}, `${when(tr.atMs)} ${stateName(tr.state)}${tr.note ? ` — ${tr.note}` : ""}`));
  box.append(hist);
  if (app.state === State.COMPLETED && app.result.length > 0) {
    const blob = new Blob([app.result as BlobPart], { type: "application/json" });
    const a = el("a", { href: URL.createObjectURL(blob), download: `${app.applicationId}.ecert.json`, id: "download", class: "button" }, t().download);
    box.append(a);
  }
  return box;
}

/** Follows an application live (WatchStatus, server streaming over gRPC-Web). */
async function follow(first: Application, city: string, org: string | undefined): Promise<void> {
  const m = main();
  m.replaceChildren(el("h2", {}, t().submitted), applicationView(first));
  try {
    for await (const app of api.crosscity.watchStatus(
      { applicationId: first.applicationId },
      { headers: about(city, { org, code: first.catalogCode }) },
    )) {
      const old = document.getElementById(`app-${app.applicationId}`);
      if (old) old.replaceWith(applicationView(app));
    }
  } catch (e) {
    show(failure(e));
  }
}

// --- my applications ---

async function applications(): Promise<void> {
  const m = main();
  const refresh = el("button", { type: "button", id: "refresh" }, t().refresh);
  refresh.onclick = () => void applications();
  m.replaceChildren(el("h2", {}, t().tabApplications), el("p", {}, t().applicationsIntro), refresh);
  try {
    await catalogItems();
  } catch (e) {
    return show(failure(e));
  }
  // Every department of every city that offers an item keeps its own applications.
  const departments = new Set<string>();
  for (const item of items) for (const c of item.offeredIn) if (item.providers[c]) departments.add(`${c}/${item.providers[c]}`);
  const found: Application[] = [];
  await Promise.all(
    [...departments].map(async (d) => {
      const [city, org] = d.split("/");
      try {
        const r = await api.crosscity.listApplications({ pageSize: 50 }, { headers: about(city, { org }) });
        found.push(...r.applications);
      } catch (e) {
        const f = failure(e);
        if (f.unauthenticated) show(f);
      }
    }),
  );
  found.sort((a, b) => Number(b.receivedAtMs - a.receivedAtMs));
  const list = el("div", { id: "applications" });
  if (found.length === 0) list.append(el("p", {}, t().none));
  for (const app of found) list.append(applicationView(app));
  m.append(list);
}

// --- "one thing" bundles ---

function bundleStateName(s: BundleState): string {
  return t().bundleStates[`BUNDLE_STATE_${BundleState[s]}`] ?? BundleState[s];
}

function itemStateName(s: ItemState): string {
  return t().itemStates[`ITEM_STATE_${ItemState[s]}`] ?? ItemState[s];
}

/** The bundles of the catalog, and the citizen's own, newest first. */
async function bundles(): Promise<void> {
  const m = main();
  m.replaceChildren(el("h2", {}, t().tabBundles), el("p", {}, t().bundlesIntro));
  try {
    await catalogItems();
    const defs = (await api.bundle.listBundles({}, { headers: about(cfg.city) })).bundles;
    const list = el("ul", { class: "items", id: "bundles" });
    for (const d of defs) {
      const name = document.documentElement.lang === "en" ? d.nameEn : d.nameZh;
      const b = el("button", { type: "button", id: `start-${d.code}`, "aria-label": `${t().startBundle} ${d.code} ${name}` }, t().startBundle);
      b.onclick = () => bundleForm(d);
      list.append(
        el("li", {}, el("span", { class: "code" }, d.code), el("span", { class: "name" }, name), el("span", { class: "meta" }, d.items.map((i) => itemName(i.code)).join(" → ")), b),
      );
    }
    m.append(list);
    const mine = (await api.bundle.listMine({}, { headers: about(cfg.city) })).bundles;
    const box = el("div", { id: "my-bundles" }, el("h3", {}, t().myBundles));
    if (mine.length === 0) box.append(el("p", {}, t().none));
    for (const b of mine) box.append(bundleView(b));
    m.append(box);
  } catch (e) {
    show(failure(e));
  }
}

function bundleForm(d: BundleDefinition): void {
  const m = main();
  const name = document.documentElement.lang === "en" ? d.nameEn : d.nameZh;
  const f = el("form", { id: "bundle-form", novalidate: "" });
  const cities = el("select", { id: "bundle-target-city" });
  for (const c of cfg.cities.filter((c) => c !== cfg.city).concat([cfg.city])) cities.append(el("option", { value: c }, cityName(c)));
  f.append(el("h2", {}, `${d.code} ${name}`), el("div", { class: "field" }, el("label", { for: "bundle-target-city" }, t().targetCity), cities));
  // Optional items: the citizen chooses; the consent names exactly the chosen ones.
  const optional = d.items.filter((i) => i.optional);
  if (optional.length > 0) {
    const fs = el("fieldset", { id: "bundle-optional" }, el("legend", {}, t().includeItem));
    for (const i of optional) {
      const id = `include-${i.code}`;
      const box = el("input", { type: "checkbox", id, value: i.code });
      box.checked = true;
      fs.append(el("div", { class: "check" }, box, el("label", { for: id }, itemName(i.code))));
    }
    f.append(fs);
  }
  for (const field of d.form) {
    const id = `bfield-${field.name}`;
    const input = el("input", { id, name: field.name, type: field.type === "date" ? "date" : "text", placeholder: field.example, "aria-describedby": `${id}-hint ${id}-error`, autocomplete: "off" });
    if (field.required) input.setAttribute("aria-required", "true");
    f.append(
      el(
        "div",
        { class: "field" },
        el("label", { for: id }, `${field.name}${field.required ? ` (${t().required})` : ""}`),
        input,
        el("small", { id: `${id}-hint` }, `${field.fills.join(", ")}${field.values.length ? ` · ${field.values.join(" / ")}` : ""} · ${t().example} ${field.example}`),
        el("span", { class: "field-error", id: `${id}-error`, role: "status" }),
      ),
    );
  }
  const kinds = [...new Set(d.items.flatMap((i) => i.materials))];
  if (kinds.length > 0) {
    const fs = el("fieldset", { id: "bundle-materials", "aria-describedby": "bundle-materials-error" }, el("legend", {}, t().materials));
    for (const kind of kinds) {
      const id = `bmaterial-${kind}`;
      fs.append(el("div", { class: "field" }, el("label", { for: id }, kind), el("input", { id, name: kind, type: "file" })));
    }
    fs.append(el("span", { class: "field-error", id: "bundle-materials-error", role: "status" }));
    f.append(fs);
  }
  const consentList = el("ul", { id: "bundle-consent-items" });
  f.append(el("p", {}, t().bundleConsent), consentList);
  const chosen = () => d.items.filter((i) => !i.optional || (f.querySelector(`#include-${CSS.escape(i.code)}`) as HTMLInputElement | null)?.checked).map((i) => i.code);
  const showConsent = () => consentList.replaceChildren(...chosen().map((c) => el("li", {}, itemName(c))));
  showConsent();
  f.onchange = showConsent;
  const cancel = el("button", { type: "button" }, t().cancel);
  cancel.onclick = () => render();
  f.append(el("div", { class: "actions" }, el("button", { type: "submit", class: "primary", id: "bundle-submit" }, t().submit), cancel));
  f.onsubmit = (ev) => {
    ev.preventDefault();
    void submitBundle(d, f, chosen());
  };
  m.replaceChildren(f);
}

async function submitBundle(d: BundleDefinition, f: HTMLFormElement, items: string[]): Promise<void> {
  const s = current();
  if (!s) return render();
  const targetCity = (f.querySelector("#bundle-target-city") as HTMLSelectElement).value;
  const fields: Record<string, string> = {};
  for (const field of d.form) {
    const v = (f.querySelector(`#bfield-${CSS.escape(field.name)}`) as HTMLInputElement).value.trim();
    if (v !== "") fields[field.name] = v;
  }
  const needed = new Set(d.items.filter((i) => items.includes(i.code)).flatMap((i) => i.materials));
  const materials = [];
  for (const kind of needed) {
    const file = (f.querySelector(`#bmaterial-${CSS.escape(kind)}`) as HTMLInputElement).files?.[0];
    if (file) materials.push({ kind, uri: `portal-upload:${encodeURIComponent(file.name)}`, sha256: await sha256Hex(file) });
  }
  const skip = d.items.filter((i) => !items.includes(i.code)).map((i) => i.code);
  for (const e of f.querySelectorAll(".field-error")) e.textContent = "";
  const req = { bundleCode: d.code, targetCity, applicantId: s.subject, fields, materials, skip, consent: "" };
  const headers = about(cfg.city);
  try {
    // First without a consent: the form is checked against every item's rules, and no
    // consent is granted for a form that cannot go.
    try {
      const st = await api.bundle.submit(req, { headers });
      return void followBundle(st);
    } catch (e) {
      const fail = failure(e);
      if (!(fail.code === Code.PermissionDenied && fail.fields.has("consent"))) throw e;
    }
    // One consent naming exactly the bundle's items, for the city that handles them.
    const grant = await api.consent.grant({
      subject: s.subject,
      grantee: d.consentGrantee,
      targetCity,
      service: d.consentService,
      purpose: d.consentPurpose,
      expiresAtMs: BigInt(Date.now() + 90 * 86400_000),
      items,
    });
    const st = await api.bundle.submit({ ...req, consent: grant.token }, { headers });
    void followBundle(st);
  } catch (e) {
    const fail = failure(e);
    if (fail.fields.size > 0) {
      // Each message at the bundle's field it concerns (paths name the item: JQ-08.account_number).
      for (const [path, why] of fail.fields) {
        const form = d.form.find((x) => x.fills.includes(path) || path === `fields.${x.name}`);
        const target = form ? f.querySelector(`#bfield-${CSS.escape(form.name)}-error`) : path.endsWith(".materials") ? f.querySelector("#bundle-materials-error") : null;
        if (target) target.textContent = [target.textContent, why].filter((x) => x).join("; ");
      }
      notice = { kind: "error", text: `${t().error}: ${fail.message}` };
      const n = document.getElementById("notice");
      if (n) n.textContent = notice.text;
      else f.prepend(el("p", { class: "error", role: "alert", id: "notice" }, notice.text));
      return;
    }
    show(fail);
  }
}

function bundleView(b: BundleStatus): HTMLElement {
  const box = el("section", { class: "bundle", id: `bundle-${b.bundleId}`, "data-bundle-state": BundleState[b.state], "aria-live": "polite" });
  box.append(
    el("h3", {}, `${b.bundleCode} · ${cityName(b.targetCity)}`),
    el("p", {}, `${t().status}: `, el("strong", { class: "bundle-state" }, bundleStateName(b.state))),
  );
  if (b.dueDate) box.append(el("p", {}, `${t().due}: ${b.dueDate}`));
  const list = el("ol", { class: "bundle-items" });
  for (const i of b.items) {
    const app = i.application;
    const li = el("li", { "data-item": i.code, "data-item-state": ItemState[i.state] }, `${itemName(i.code)}: ${itemStateName(i.state)}`);
    if (app && app.state !== State.UNSPECIFIED) li.append(` (${stateName(app.state)}${app.dueDate ? `, ${t().due} ${app.dueDate}` : ""})`);
    if (i.reason) li.append(el("div", { class: "reason" }, i.reason));
    list.append(li);
  }
  box.append(list);
  if (b.action.length > 0) {
    box.append(el("p", { class: "error" }, t().actionNeeded), el("ul", { class: "actions-needed" }, ...b.action.map((a) => el("li", {}, a))));
  }
  if (b.state === BundleState.IN_PROGRESS) {
    const w = el("button", { type: "button", class: "withdraw-bundle", id: `withdraw-${b.bundleId}` }, t().withdrawBundle);
    w.onclick = async () => {
      try {
        const after = await api.bundle.withdraw({ bundleId: b.bundleId, reason: "" }, { headers: about(cfg.city) });
        document.getElementById(`bundle-${b.bundleId}`)?.replaceWith(bundleView(after));
      } catch (e) {
        show(failure(e));
      }
    };
    box.append(w);
  }
  return box;
}

/** Follows a bundle live (WatchStatus): one status for all its items. */
async function followBundle(first: BundleStatus): Promise<void> {
  const m = main();
  m.replaceChildren(el("h2", {}, t().submitted), el("div", { id: "bundle-status" }, bundleView(first)));
  try {
    for await (const b of api.bundle.watchStatus({ bundleId: first.bundleId }, { headers: about(cfg.city) })) {
      document.getElementById(`bundle-${b.bundleId}`)?.replaceWith(bundleView(b));
    }
  } catch (e) {
    show(failure(e));
  }
}

// --- consents ---

async function consents(): Promise<void> {
  const s = current();
  if (!s) return render();
  const m = main();
  const f = el("form", { id: "consent-form" });
  const field = (id: string, label: string, input: HTMLElement) => el("div", { class: "field" }, el("label", { for: id }, label), input);
  const cities = el("select", { id: "consent-target-city" });
  for (const c of cfg.cities) cities.append(el("option", { value: c }, cityName(c)));
  const tomorrow = new Date(Date.now() + 30 * 86400_000).toISOString().slice(0, 10);
  try {
    await catalogItems();
  } catch (e) {
    return show(failure(e));
  }
  // One checkbox per item with personal data: a consent covers only the items it names.
  const itemsError = el("p", { class: "error", id: "consent-items-error", "aria-live": "polite" });
  const choose = el("fieldset", { id: "consent-items", "aria-describedby": "consent-items-error" }, el("legend", {}, t().items), itemsError);
  for (const item of items.filter((i) => i.personalData)) {
    const id = `consent-item-${item.code}`;
    choose.append(el("div", { class: "check" }, el("input", { type: "checkbox", id, value: item.code }), el("label", { for: id }, itemName(item.code))));
  }
  f.append(
    field("consent-grantee", t().grantee, el("input", { id: "consent-grantee", placeholder: "qingdao/gjj", required: "", pattern: "[a-z0-9-]+/[a-z0-9-]+" })),
    field("consent-target-city", t().city, cities),
    field("consent-service", t().service, el("input", { id: "consent-service", value: CROSSCITY_V2, required: "" })),
    field("consent-purpose", t().purpose, el("input", { id: "consent-purpose", value: PURPOSE, required: "" })),
    choose,
    field("consent-expires", t().expires, el("input", { id: "consent-expires", type: "date", value: tomorrow, required: "" })),
    el("button", { type: "submit", class: "primary", id: "grant" }, t().grant),
  );
  const value = (id: string) => (f.querySelector(`#${id}`) as HTMLInputElement).value.trim();
  f.onsubmit = async (ev) => {
    ev.preventDefault();
    const chosen = [...f.querySelectorAll<HTMLInputElement>("#consent-items input:checked")].map((i) => i.value);
    itemsError.textContent = chosen.length === 0 ? t().chooseItems : "";
    if (chosen.length === 0) return;
    try {
      const r = await api.consent.grant({
        subject: s.subject,
        grantee: value("consent-grantee"),
        targetCity: value("consent-target-city"),
        service: value("consent-service"),
        purpose: value("consent-purpose"),
        expiresAtMs: BigInt(new Date(`${value("consent-expires")}T23:59:59`).getTime()),
        items: chosen,
      });
      notice = { kind: "info", text: t().grant };
      await consents();
      main().append(el("div", { class: "token" }, el("label", { for: "consent-token" }, t().consentToken), el("textarea", { id: "consent-token", readonly: "", rows: "3" }, r.token)));
    } catch (e) {
      show(failure(e));
    }
  };
  m.replaceChildren(el("h2", {}, t().tabConsents), el("p", {}, t().consentsIntro), f);
  try {
    const r = await api.consent.list({ subject: s.subject });
    const table = el("table", { id: "consents" });
    table.append(el("thead", {}, el("tr", {}, ...[t().grantee, t().city, t().items, t().purpose, t().expires, t().status, ""].map((h) => el("th", { scope: "col" }, h)))));
    const body = el("tbody", {});
    for (const c of r.consents) {
      const now = Date.now();
      const state = c.revoked ? t().revoked : Number(c.expiresAtMs) < now ? t().expired : t().active;
      const revoke = el("button", { type: "button", "data-consent": c.id, "aria-label": `${t().revoke} ${c.grantee}` }, t().revoke);
      revoke.disabled = c.revoked;
      revoke.onclick = async () => {
        try {
          await api.consent.revoke({ subject: s.subject, id: c.id });
          await consents();
        } catch (e) {
          show(failure(e));
        }
      };
      body.append(el("tr", { "data-state": c.revoked ? "revoked" : "active" }, ...[c.grantee, cityName(c.targetCity), c.items.length ? c.items.map(itemName).join("、") : c.service, purposeName(c.purpose), when(c.expiresAtMs), state].map((v) => el("td", {}, v)), el("td", {}, revoke)));
    }
    table.append(body);
    main().append(r.consents.length ? table : el("p", {}, t().none));
  } catch (e) {
    show(failure(e));
  }
}

// --- access log ---

async function access(): Promise<void> {
  const s = current();
  if (!s) return render();
  const m = main();
  m.replaceChildren(el("h2", {}, t().tabAccess), el("p", {}, t().accessIntro));
  try {
    const r = await api.audit.accessLog({ subject: s.subject, limit: 200 });
    await catalogItems();
    const table = el("table", { id: "access" });
    const columns: [string, string][] = [
      ["time", t().time],
      ["organisation", t().organisation],
      ["person", t().person],
      ["city", t().city],
      ["item", t().service],
      ["purpose", t().purpose],
      ["consent", t().consent],
      ["outcome", t().outcome],
    ];
    table.append(el("thead", {}, el("tr", {}, ...columns.map(([, h]) => el("th", { scope: "col" }, h)))));
    const body = el("tbody", {});
    for (const a of r.accesses) {
      // The consent by what it is (its id, the key to the Consents tab, shortened).
      const consent = a.consentId === "own-data" ? t().ownData : a.consentId ? `${t().yourConsent} ${a.consentId.slice(0, 8)}` : "—";
      // A citizen token acts only about the citizen themselves: a citizen's access here is
      // the reader's own. An official is shown by the id their city issued.
      const person = a.callerKind === "citizen" ? t().citizenSelf : a.callerKind === "system" ? `${a.callerPerson} (${t().system})` : a.callerPerson;
      const what = a.catalogCode
        ? a.catalogCode.split(",").map(itemName).join(", ")
        : `${a.service.split(".").slice(-1)[0]}/${a.method}`;
      // A change of the citizen's consents (granted, revoked) rather than an access.
      const outcome =
        a.change === "consent_granted"
          ? t().consentGranted
          : a.change === "consent_revoked"
            ? t().consentRevoked
            : a.grpcStatus === 0
              ? t().allowed
              : `${t().refused} (${a.grpcStatus})`;
      const cells = [when(a.atMs), `${cityName(a.callerCity)}/${a.callerOrg}`, person, `${cityName(a.nodeCity || a.targetCity)}`, what, purposeName(a.purpose), consent, outcome];
      body.append(
        el(
          "tr",
          { "data-request-id": a.requestId, "data-status": String(a.grpcStatus), "data-change": a.change },
          ...cells.map((v, i) => el("td", { "data-col": columns[i][0] }, v)),
        ),
      );
    }
    table.append(body);
    m.append(r.accesses.length ? table : el("p", {}, t().none));
    if (r.unreachable.length > 0) {
      m.append(el("p", { class: "error", role: "status", id: "unreachable" }, `${t().partial}: ${r.unreachable.join("; ")}`));
    }
    if (r.coverage && !r.coverage.complete) {
      m.append(el("p", { class: "error", role: "status", id: "incomplete" }, t().incomplete));
    }
  } catch (e) {
    show(failure(e));
  }
}

async function start(): Promise<void> {
  cfg = await loadConfig();
  api = clients(cfg);
  const failed = await completeSignIn(cfg);
  if (failed) notice = { kind: "error", text: `${t().error}: ${failed}` };
  render();
}

// For the end-to-end test of an expired session only.
(window as unknown as { tongbanUseToken: (t: string) => void }).tongbanUseToken = (tok: string) => {
  useToken(tok);
  render();
};

void start();
