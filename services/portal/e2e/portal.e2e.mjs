// End to end in a real browser (Debian's Chromium, driven by playwright-core; nothing is
// downloaded): a citizen of Jinan signs in at the dev identity provider (code + PKCE),
// applies for a service handled by Qingdao (first with a bad phone number: the provider's
// message appears at the field), follows it to completion and downloads the certificate;
// grants a consent to Qingdao's hrss, which then calls Jinan about the citizen (allowed),
// revokes it, and the same call is refused; finds that refused call in the access log;
// switches to English; a second citizen sees none of the first's data; an expired token is
// refused with a message the page shows; the second citizen then moves to Qingdao with a
// "one thing" bundle (a field error of its third service shown at the bundle's field, then
// one consent and one status to completion) and withdraws a second one mid-way. Screenshots of each step go to SCREENS.
//
// usage (after `npm run build`, which bundles this file to .e2e/portal.e2e.mjs):
//   node .e2e/portal.e2e.mjs '{"portal": URL, "qingdaoCaller": "http://…", "qingdaoToken": "…",
//          "subject": "<the first citizen's id>", "expiredToken": "…", "screens": DIR,
//          "chromium": "/usr/bin/chromium"}'
// Prints one JSON document with what it saw.

import { mkdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { chromium } from "playwright-core";

import { CrossCityService } from "../src/gen/tongban/crosscity/v1/crosscity_pb.ts";

const args = JSON.parse(process.argv[2]);
const axePath = createRequire(import.meta.url).resolve("axe-core/axe.min.js");
// WCAG 2 A and AA checks of the page as it is (axe-core), serious and critical findings kept.
async function audit(page, where) {
  await page.addScriptTag({ path: axePath });
  const found = await page.evaluate(async () => {
    const r = await window.axe.run(document, { runOnly: ["wcag2a", "wcag2aa"] });
    return r.violations
      .filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => `${v.id}: ${v.help} (${v.nodes.length})`);
  });
  out.accessibility[where] = found;
}
mkdirSync(args.screens, { recursive: true });
const out = { steps: [], accessibility: {} };
const step = async (page, name) => {
  await page.screenshot({ path: join(args.screens, `${name}.png`) });
  out.steps.push(name);
};

// Qingdao's hrss, a system of the other city, calling Jinan about the citizen.
const qingdao = createClient(
  CrossCityService,
  createGrpcTransport({ baseUrl: args.qingdaoCaller }),
);
async function qingdaoCalls(subject, consentToken) {
  const headers = {
    authorization: `Bearer ${args.qingdaoToken}`,
    "x-tongban-target-city": "jinan",
    "x-tongban-purpose": "case-handling",
    "x-tongban-catalog-code": "JQ-03",
    "x-tongban-subject": subject,
    "x-tongban-consent": consentToken,
  };
  let requestId = "";
  try {
    await qingdao.submit(
      { catalogCode: "JQ-03" },
      {
        headers,
        onHeader: (h) => (requestId = h.get("x-tongban-request-id") ?? requestId),
        onTrailer: (h) => (requestId = h.get("x-tongban-request-id") ?? requestId),
      },
    );
    return { ok: true, requestId };
  } catch (e) {
    return { ok: false, code: e.code, message: e.rawMessage, requestId: e.metadata?.get("x-tongban-request-id") ?? requestId };
  }
}

const browser = await chromium.launch({
  executablePath: args.chromium,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  // A phone-sized screen.
  const context = await browser.newContext({ viewport: { width: 412, height: 915 }, acceptDownloads: true, locale: "zh-CN" });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));

  await page.goto(args.portal);
  await page.waitForSelector("#sign-in");
  await step(page, "01-welcome");
  await page.click("#sign-in");
  await page.waitForSelector("#user-0");
  await step(page, "02-sign-in");
  // Keyboard only: the first citizen's button, then Enter.
  await page.focus("#user-0");
  await page.keyboard.press("Enter");
  await page.waitForSelector("#items li");
  out.items = await page.locator("#items li").count();
  out.who = await page.textContent("#who");
  await step(page, "03-services");
  await audit(page, "services");

  // JQ-01 is handled by Qingdao for a citizen of Jinan.
  await page.click("#apply-JQ-01");
  await page.waitForSelector("#application-form");
  for (const input of await page.locator("#application-form input[type=text], #application-form input[type=date]").all()) {
    await input.fill((await input.getAttribute("placeholder")) ?? "");
  }
  await audit(page, "application form");
  await page.fill("#field-phone", "123");
  await page.setInputFiles("#material-id-card", { name: "id-card.jpg", mimeType: "image/jpeg", buffer: Buffer.from("id card scan") });
  await page.setInputFiles("#material-photo", { name: "photo.jpg", mimeType: "image/jpeg", buffer: Buffer.from("photo") });
  await page.click("#submit");
  await page.waitForFunction(() => (document.querySelector("#field-phone-error")?.textContent ?? "") !== "");
  out.phoneError = await page.textContent("#field-phone-error");
  await step(page, "04-provider-validation");
  await page.fill("#field-phone", (await page.getAttribute("#field-phone", "placeholder")) ?? "");
  await page.click("#submit");
  await page.waitForSelector(".state[data-state=COMPLETED]", { timeout: 30000 });
  out.history = await page.locator(".history li").count();
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  out.certificate = join(args.screens, "certificate.ecert.json");
  await download.saveAs(out.certificate);
  await step(page, "05-completed");

  // My applications: the one just made, from Qingdao's department.
  await page.click("#tab-applications");
  await page.waitForSelector("#applications");
  out.applications = await page.locator("#applications .application").count();
  await step(page, "06-applications");

  // A consent for Qingdao's hrss to call Jinan about the citizen.
  await page.click("#tab-consents");
  await page.waitForSelector("#consent-form");
  await page.fill("#consent-grantee", "qingdao/hrss");
  await page.selectOption("#consent-target-city", "jinan");
  await page.fill("#consent-service", "tongban.crosscity.v1.CrossCityService");
  // Without an item the portal asks for one; then only JQ-03 (pension transfer) is chosen.
  await page.click("#grant");
  await page.waitForFunction(() => (document.querySelector("#consent-items-error")?.textContent ?? "") !== "");
  out.noItem = await page.textContent("#consent-items-error");
  await page.check("#consent-item-JQ-03");
  await page.click("#grant");
  await page.waitForSelector("#consent-token");
  const token = (await page.inputValue("#consent-token")).trim();
  const mine = page.locator("#consents tr[data-state=active]", { hasText: "qingdao/hrss" });
  out.consentsActive = await mine.count();
  out.consentRow = await mine.first().textContent();
  await step(page, "07-consent-granted");
  await audit(page, "consents");
  out.allowed = await qingdaoCalls(args.subject, token);

  await mine.locator("button[data-consent]").click();
  await page.waitForFunction(() => ![...document.querySelectorAll("#consents tr[data-state=active]")].some((r) => r.textContent.includes("qingdao/hrss")));
  await step(page, "08-consent-revoked");
  // Revocations reach Qingdao's node with the catalog; the call is refused once they have.
  let refused = await qingdaoCalls(args.subject, token);
  for (let i = 0; i < 50 && refused.ok; i++) {
    await new Promise((r) => setTimeout(r, 100));
    refused = await qingdaoCalls(args.subject, token);
  }
  out.refused = refused;

  // The access log: the refused call is there, by request id.
  await page.click("#tab-access");
  await page.waitForSelector("#access");
  out.accessRows = await page.locator("#access tbody tr").count();
  out.refusedInLog = refused.requestId ? await page.locator(`#access tr[data-request-id="${refused.requestId}"]`).count() : 0;
  out.refusedRow = refused.requestId ? await page.locator(`#access tr[data-request-id="${refused.requestId}"]`).textContent() : null;
  const allowedRow = page.locator(`#access tr[data-request-id="${out.allowed.requestId}"]`);
  out.allowedPerson = out.allowed.requestId ? await allowedRow.locator("td[data-col=person]").textContent() : null;
  out.allowedItem = out.allowed.requestId ? await allowedRow.locator("td[data-col=item]").textContent() : null;
  out.allowedPurpose = out.allowed.requestId ? await allowedRow.locator("td[data-col=purpose]").textContent() : null;
  // The citizen's own consent grant is in their log too, as what it is.
  out.grantRows = await page.locator(`#access tr[data-change="consent_granted"]`).allTextContents();
  out.revokeRows = await page.locator(`#access tr[data-change="consent_revoked"]`).allTextContents();
  await step(page, "09-access-log");
  await audit(page, "access log");

  await page.click("#lang");
  await page.waitForSelector("text=Who looked at my data");
  out.english = await page.textContent("h2");
  await step(page, "10-english");

  // Nothing survives in storage: the token lived in memory only.
  out.storage = await page.evaluate(() => ({ local: localStorage.length, session: sessionStorage.length, cookie: document.cookie }));

  // An expired token is refused, and the page says so.
  // (The page re-renders the access log with it at once.)
  await page.evaluate((tok) => window.tongbanUseToken(tok), args.expiredToken);
  await page.waitForSelector("#notice[role=alert]");
  out.expired = await page.textContent("#notice");
  await step(page, "11-expired");

  // The second citizen sees none of the first's data.
  await page.click("#sign-in");
  await page.click("#user-1");
  await page.waitForSelector("#items li");
  out.secondWho = await page.textContent("#who");
  await page.click("#tab-applications");
  await page.waitForSelector("#applications");
  out.secondApplications = await page.locator("#applications .application").count();
  await page.click("#tab-consents");
  await page.waitForSelector("#consent-form");
  await page.waitForLoadState("networkidle");
  out.secondConsents = await page.locator("#consents tbody tr").count();
  await page.click("#tab-access");
  await page.waitForLoadState("networkidle");
  // Their own log lists only what the portal read for them (their own data, consent
  // "本人"), never an access to the first citizen's data (e.g. Qingdao's hrss).
  // (They opened their applications above, so the log has rows: wait for them.)
  await page.waitForSelector("#access tbody tr");
  const secondRows = await page.locator("#access tbody tr").allTextContents();
  out.secondAccess = secondRows.length;
  out.secondAccessNotOwn = secondRows.filter((r) => !r.includes("本人") || r.includes("hrss"));
  await step(page, "12-second-citizen");

  // A "one thing" bundle (the second citizen moves to Qingdao): one form for four services,
  // first with a bad provident fund account (a rule of the third service, JQ-08): the
  // message appears at the bundle's field, and nothing is sent or consented.
  await page.click("#tab-bundles");
  await page.waitForSelector("#bundles li");
  out.bundles = await page.locator("#bundles li").count();
  await page.click("#start-JQB-01");
  await page.waitForSelector("#bundle-form");
  for (const input of await page.locator("#bundle-form input[type=text], #bundle-form input[type=date]").all()) {
    await input.fill((await input.getAttribute("placeholder")) ?? "");
  }
  await page.selectOption("#bundle-target-city", "qingdao");
  out.bundleConsentItems = await page.locator("#bundle-consent-items li").count();
  for (const input of await page.locator("#bundle-materials input[type=file]").all()) {
    const kind = await input.getAttribute("name");
    await input.setInputFiles({ name: `${kind}.pdf`, mimeType: "application/pdf", buffer: Buffer.from(`scan of ${kind}`) });
  }
  await page.fill("#bfield-provident_fund_account", "12AB");
  await page.click("#bundle-submit");
  await page.waitForFunction(() => (document.querySelector("#bfield-provident_fund_account-error")?.textContent ?? "") !== "");
  out.bundleFieldError = await page.textContent("#bfield-provident_fund_account-error");
  await step(page, "13-bundle-validation");
  await audit(page, "bundle form");
  // Corrected: one consent naming the four services, then one status until all are done.
  await page.fill("#bfield-provident_fund_account", (await page.getAttribute("#bfield-provident_fund_account", "placeholder")) ?? "");
  await page.click("#bundle-submit");
  await page.waitForSelector("#bundle-status .bundle[data-bundle-state=COMPLETED]", { timeout: 60000 });
  out.bundleItemsCompleted = await page.locator("#bundle-status li[data-item-state=COMPLETED]").count();
  out.bundleStatus = await page.textContent("#bundle-status .bundle-state");
  await step(page, "14-bundle-completed");
  // A second one, withdrawn while its first service is with the department.
  await page.click("#tab-bundles");
  await page.waitForSelector("#start-JQB-01");
  await page.click("#start-JQB-01");
  await page.waitForSelector("#bundle-form");
  for (const input of await page.locator("#bundle-form input[type=text], #bundle-form input[type=date]").all()) {
    await input.fill((await input.getAttribute("placeholder")) ?? "");
  }
  for (const input of await page.locator("#bundle-materials input[type=file]").all()) {
    const kind = await input.getAttribute("name");
    await input.setInputFiles({ name: `${kind}.pdf`, mimeType: "application/pdf", buffer: Buffer.from(`scan of ${kind}`) });
  }
  await page.click("#bundle-submit");
  await page.waitForSelector("#bundle-status .withdraw-bundle");
  await page.click("#bundle-status .withdraw-bundle");
  await page.waitForSelector("#bundle-status .bundle[data-bundle-state=WITHDRAWN]", { timeout: 30000 });
  out.withdrawnItems = await page.locator("#bundle-status li[data-item-state=WITHDRAWN]").count();
  await step(page, "15-bundle-withdrawn");
  // Both in the citizen's list.
  await page.click("#tab-bundles");
  await page.waitForSelector("#my-bundles .bundle");
  out.myBundles = await page.locator("#my-bundles .bundle").count();
  await step(page, "16-my-bundles");
  out.pageErrors = errors;
} finally {
  await browser.close();
}
writeFileSync(join(args.screens, "result.json"), JSON.stringify(out, null, 2));
console.log(JSON.stringify(out));
