// The audit log (SPEC §4.2): changes made in the console show up in its audit view,
// filtered by object and by actor, each with its action and its before and after side by
// side (the changed fields marked) — and no plaintext key anywhere on the page.

import { join } from "node:path";
import { apiOk, assert, assertEqual, openTab, signedIn, submitDialog, unique } from "../lib.mjs";

const ACTOR = "master_key";
/** Anything shaped like a whole key (a key_name is `sk-…` and a few characters). */
const WHOLE_KEY = /\bsk-[A-Za-z0-9_-]{20,}/;

const rows = (page) => page.locator('[data-testid="audit-row"]');

/** The audit rows on the page, as the person sees them. */
async function shownRows(page) {
  return rows(page).evaluateAll((trs) => trs.map((tr) => ({
    id: tr.dataset.id,
    action: tr.querySelector('[data-testid="audit-action"]').textContent.trim(),
    actor: tr.querySelector('[data-testid="audit-actor"]').textContent.trim(),
    objectId: tr.dataset.objectId,
  })));
}

/**
 * Fills the filters (empty: any) and applies them; waits until `ready(arg)` holds in the
 * page — a condition the table before the filter does not meet — and says what the
 * table shows if it never does.
 */
async function filter(page, fields, ready, arg) {
  const { type = "", object = "", actor = "" } = fields;
  await page.locator('[data-testid="audit-filter-type"]').selectOption(type);
  await page.locator('[data-testid="audit-filter-object"]').fill(object);
  await page.locator('[data-testid="audit-filter-actor"]').fill(actor);
  await page.locator('[data-testid="audit-apply"]').click();
  try {
    await page.waitForFunction(ready, arg);
  } catch (err) {
    const shown = (await shownRows(page)).slice(0, 5).map((r) => `${r.action} ${r.actor} ${r.objectId}`);
    throw new Error(`filtered by ${JSON.stringify(fields)}, the table never showed what it should; it shows ` +
      `${JSON.stringify(shown)}${shown.length === 5 ? " …" : ""}\n${err.message}`);
  }
}

/** One side of a change (`audit-before` / `audit-after`) as `{field: [value, changed]}`. */
async function side(row, testid) {
  const box = row.locator(`[data-testid="${testid}"]`);
  return box.evaluate((el) => {
    if (el.classList.contains("none")) return null;
    const out = {};
    for (const kv of el.querySelectorAll(".kv")) {
      out[kv.querySelector(".k").textContent] = [kv.querySelector(".v").textContent, kv.classList.contains("changed")];
    }
    return out;
  });
}

/** Fails when any of `secrets` — or anything shaped like a whole key — is anywhere in the page. */
async function assertNoKeyShown(page, secrets) {
  const html = await page.content();
  const fields = await page.evaluate(() => Array.from(document.querySelectorAll("input, textarea"), (el) => [el.id, el.value]));
  for (const [what, secret] of Object.entries(secrets)) {
    assert(!html.includes(secret), `${what} is in the page's markup`);
    const field = fields.find(([, value]) => value.includes(secret));
    assert(!field, `${what} is in a field (#${field && field[0]})`);
  }
  const found = WHOLE_KEY.exec(html);
  assert(!found, `something shaped like a key is in the page's markup: ${found && found[0].slice(0, 12)}…`);
}

export const checks = [
  ["the audit view finds the changes just made", async ({ page, env }) => {
    const alias = unique("browser-audited");
    const teamId = unique("browser-audited-team");
    await signedIn(page, env);

    // Three changes through the console: a key created, that key blocked, a team created.
    await page.locator("#keys-new").click();
    await page.locator("#dialog[open]").waitFor();
    await page.locator("#f-key_alias").fill(alias);
    await submitDialog(page);
    await page.locator("#secret").waitFor({ state: "visible" });
    const plaintext = await page.locator("#secret-value").inputValue();
    assert(/^sk-/.test(plaintext), "the banner shows the new key");
    await page.locator("#secret-done").click();
    await page.locator("#secret").waitFor({ state: "hidden" });
    const keyRow = page.locator('[data-testid="key-row"]', { hasText: alias });
    const keyId = await keyRow.getAttribute("data-key-id");
    assert(keyId, "the key's row carries its key_id");
    await keyRow.getByRole("button", { name: "Block", exact: true }).click();
    await keyRow.locator('[data-testid="key-status"]').filter({ hasText: "Blocked" }).waitFor();

    await openTab(page, "teams");
    await page.locator("#teams-new").click();
    await page.locator("#dialog[open]").waitFor();
    await page.locator("#f-team_id").fill(teamId);
    await page.locator("#f-team_alias").fill("Audited team");
    await submitDialog(page);
    await page.locator(`[data-testid="team-row"][data-team-id="${teamId}"]`).waitFor();

    // The audit tab, unfiltered: newest first, so the team's creation is on top.
    await page.locator('[data-testid="tab-audit"]').click();
    await page.locator("#view-audit").waitFor({ state: "visible" });
    await page.locator(`#audit-body > [data-testid="audit-row"]:first-child[data-object-id="${teamId}"]`).waitFor();

    // By object: exactly the key's two changes, newest first, as the API has them.
    await filter(page, { type: "key", object: keyId }, (id) =>
      Array.from(document.querySelectorAll('[data-testid="audit-row"]')).every((tr) => tr.dataset.objectId === id), keyId);
    const byKey = await shownRows(page);
    assertEqual(byKey.map((r) => [r.action, r.actor, r.objectId]),
      [["key.block", ACTOR, keyId], ["key.generate", ACTOR, keyId]], "the key's audit rows");
    const fromApi = await apiOk(env, "GET", `/audit/logs?object_type=key&object_id=${encodeURIComponent(keyId)}`);
    assertEqual(byKey.map((r) => r.id), fromApi.map((r) => String(r.id)), "the rows shown are the API's");

    // The block: before and after side by side, `blocked` false → true marked as changed.
    const blockRow = rows(page).filter({ has: page.locator('[data-testid="audit-action"]', { hasText: "key.block" }) });
    const before = await side(blockRow, "audit-before");
    const after = await side(blockRow, "audit-after");
    assertEqual(before.blocked, ["false", true], "`blocked` before the block (value, marked changed)");
    assertEqual(after.blocked, ["true", true], "`blocked` after the block (value, marked changed)");
    assertEqual(after.key_alias, [alias, false], "an unchanged field (value, marked changed)");
    assertEqual(Object.keys(before).sort(), Object.keys(after).sort(), "both sides list the same fields");
    assert(await blockRow.locator('[data-testid="audit-before"] .kv.changed').first().isVisible(), "the changed field shows");
    assert(await blockRow.locator('[data-testid="audit-after"] .kv.same').first().isHidden(), "unchanged fields fold away");
    const [b, a] = [await blockRow.locator('[data-testid="audit-before"]').boundingBox(),
      await blockRow.locator('[data-testid="audit-after"]').boundingBox()];
    assert(b.x + b.width <= a.x && b.y < a.y + a.height && a.y < b.y + b.height,
      `before and after side by side: before ${JSON.stringify(b)}, after ${JSON.stringify(a)}`);
    // The creation: nothing before, the new key after.
    const generateRow = rows(page).filter({ has: page.locator('[data-testid="audit-action"]', { hasText: "key.generate" }) });
    assertEqual(await side(generateRow, "audit-before"), null, "before a creation");
    assertEqual((await side(generateRow, "audit-after")).key_alias, [alias, false], "the created key's alias");
    // Without the toasts of the changes above, which would cover the rows (a click
    // dismisses one).
    await page.evaluate(() => document.querySelectorAll("#toasts .toast").forEach((toast) => toast.click()));
    await page.locator("#toasts .toast").first().waitFor({ state: "detached" });
    await page.screenshot({ path: join(env.screenshots, "console-audit.png"), animations: "disabled" });

    // By actor: nobody else made these changes; the master key made all three, newest first.
    await filter(page, { type: "team", object: teamId, actor: "jwt:nobody" }, () =>
      document.querySelector('#audit-body .empty-row') !== null);
    assertEqual(await rows(page).count(), 0, "rows for an actor who changed nothing");
    await filter(page, { type: "team", object: teamId, actor: ACTOR }, (id) => {
      const trs = Array.from(document.querySelectorAll('[data-testid="audit-row"]'));
      return trs.length > 0 && trs.every((tr) => tr.dataset.objectId === id);
    }, teamId);
    assertEqual((await shownRows(page)).map((r) => [r.action, r.actor, r.objectId]),
      [["team.new", ACTOR, teamId]], "the team's audit rows, by the master key");
    const teamRow = rows(page).first();
    assertEqual(await side(teamRow, "audit-before"), null, "before the team's creation");
    const team = await side(teamRow, "audit-after");
    assertEqual([team.team_id[0], team.team_alias[0]], [teamId, "Audited team"], "the created team");
    await filter(page, { actor: ACTOR }, (id) => {
      const trs = document.querySelectorAll('[data-testid="audit-row"]');
      return trs.length >= 3 && trs[0].dataset.objectId === id && trs[0].dataset.action === "team.new";
    }, teamId);
    const mine = (await shownRows(page)).slice(0, 3);
    assertEqual(mine.map((r) => [r.action, r.actor, r.objectId]),
      [["team.new", ACTOR, teamId], ["key.block", ACTOR, keyId], ["key.generate", ACTOR, keyId]],
      "the master key's latest changes");
    assert((await shownRows(page)).every((r) => r.actor === ACTOR), "every row shown is the master key's");

    // Nothing on the page is a key: not the one just made, not the master key.
    await assertNoKeyShown(page, { "the new key": plaintext, "the master key": env.masterKey, "the proxy key": env.proxyKey });
  }],
];
