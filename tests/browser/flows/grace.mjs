// Key rotation with a grace period (SPEC §4.2): regenerated in the console, the new
// plaintext shown once, the previous one still working until `grace_until` (shown in the
// key list), and a later regeneration ending that grace at once — verified over HTTP.

import { api, apiOk, assert, assertEqual, signedIn, submitDialog, unique } from "../lib.mjs";

const HOUR_MS = 3_600_000;
/** `grace_until` may be stored to the second; the bounds below allow for that, no more. */
const STORED_PRECISION_MS = 1_000;

const keyRow = (page, keyId) => page.locator(`[data-testid="key-row"][data-key-id="${keyId}"]`);

/** The status a proxied request made with `plaintext` gets. */
async function proxiedStatus(env, plaintext) {
  const response = await fetch(`${env.base}/api/chat`, {
    method: "POST",
    headers: { Authorization: `Bearer ${plaintext}`, "Content-Type": "application/json" },
    body: JSON.stringify({ model: env.model, messages: [{ role: "user", content: "rotate" }], stream: false }),
  });
  await response.arrayBuffer();
  return response.status;
}

/** Which of `plaintexts` (`{name: plaintext}`) authenticate: proxied statuses by name. */
async function statuses(env, plaintexts) {
  const out = {};
  for (const [name, plaintext] of Object.entries(plaintexts)) out[name] = await proxiedStatus(env, plaintext);
  return out;
}

async function keyInfo(env, keyId) {
  return (await apiOk(env, "GET", `/key/info?key_id=${encodeURIComponent(keyId)}`)).info;
}

/**
 * Regenerates `keyId` with the console's dialog, `grace` typed into the grace-period
 * field (empty: none). The plaintext the banner shows, the banner's title, and the
 * times (ms) just before and after the submit.
 */
async function regenerateInConsole(page, keyId, grace) {
  await keyRow(page, keyId).getByRole("button", { name: "Regenerate", exact: true }).click();
  await page.locator("#dialog[open]").waitFor();
  const field = page.locator('[data-testid="regenerate-grace"]');
  await field.waitFor({ state: "visible" });
  await field.fill(grace);
  const before = Date.now();
  await submitDialog(page);
  const after = Date.now();
  await page.locator("#secret").waitFor({ state: "visible" });
  const plaintext = await page.locator("#secret-value").inputValue();
  assert(/^sk-[A-Za-z0-9_-]{20,}$/.test(plaintext), `the banner shows a key: ${JSON.stringify(plaintext)}`);
  const title = (await page.locator("#secret-title").textContent()).trim();
  return { plaintext, title, before, after };
}

/** Closes the banner; the plaintext is nowhere on the page afterwards. */
async function dismiss(page, plaintext) {
  await page.locator("#secret-done").click();
  await page.locator("#secret").waitFor({ state: "hidden" });
  const html = await page.content();
  assert(!html.includes(plaintext), "the plaintext is still in the page after Done");
  const values = await page.evaluate(() => Array.from(document.querySelectorAll("input, textarea"), (el) => el.value));
  assert(!values.some((v) => v.includes(plaintext)), "the plaintext is still in a field after Done");
}

/** `grace_until` is `hours` after the submit (the server's clock is this machine's). */
function assertGraceUntil(graceUntil, hours, { before, after }, what) {
  assert(graceUntil, `${what}: grace_until is set`);
  const at = Date.parse(graceUntil);
  assert(!isNaN(at), `${what}: grace_until parses: ${graceUntil}`);
  const low = before + hours * HOUR_MS - STORED_PRECISION_MS;
  const high = after + hours * HOUR_MS;
  assert(at >= low && at <= high,
    `${what}: grace_until ${graceUntil} is ${hours} h after the regeneration (${new Date(before).toISOString()}…${new Date(after).toISOString()})`);
}

/** The key's row shows how long the previous plaintext works: `grace_until`, in words. */
async function assertGraceShown(page, keyId, graceUntil, words) {
  const note = keyRow(page, keyId).locator('[data-testid="key-grace"]');
  await note.waitFor({ state: "visible" });
  assertEqual(await note.getAttribute("data-grace-until"), graceUntil, "the row's grace note is the key's grace_until");
  const text = (await note.textContent()).trim();
  assert(words.test(text), `the row's grace note says how long the old key works: ${JSON.stringify(text)}`);
}

export const checks = [
  ["regenerate a key with a grace period", async ({ page, env }) => {
    const alias = unique("browser-rotate");
    const made = await apiOk(env, "POST", "/key/generate", { key_alias: alias });
    const keyId = made.key_id;
    const p0 = made.key;
    assertEqual(await statuses(env, { p0 }), { p0: 200 }, "the key works before any rotation");

    await signedIn(page, env);
    await keyRow(page, keyId).waitFor();
    assertEqual(await keyRow(page, keyId).locator('[data-testid="key-grace"]').count(), 0, "a grace note before any rotation");

    // 1. With a grace period of 1h: both plaintexts work, the list says for how long.
    const first = await regenerateInConsole(page, keyId, "1h");
    const p1 = first.plaintext;
    assert(p1 !== p0, "the regenerated plaintext is new");
    assert(/previous key works until/.test(first.title), `the banner says the previous key still works: ${first.title}`);
    const same = (await apiOk(env, "GET", `/key/info?key=${encodeURIComponent(p1)}`)).info;
    assertEqual(same.key_id, keyId, "the new plaintext is the same key (key_id)");
    assertEqual(await statuses(env, { p0, p1 }), { p0: 200, p1: 200 }, "during the grace, old and new plaintext");
    let info = await keyInfo(env, keyId);
    assertGraceUntil(info.grace_until, 1, first, "after a rotation with 1h of grace");
    assertEqual(info.key_alias, alias, "the alias, kept");
    await assertGraceShown(page, keyId, info.grace_until, /^old key works in (1 h|60 min)$/);
    assert(!(await keyRow(page, keyId).textContent()).includes(p1), "the key list shows the plaintext");
    await dismiss(page, p1);

    // 2. Again, with grace: the first old plaintext stops at once, the one just replaced works.
    const second = await regenerateInConsole(page, keyId, "2h");
    const p2 = second.plaintext;
    assert(![p0, p1].includes(p2), "the second regenerated plaintext is new");
    assertEqual(await statuses(env, { p0, p1, p2 }), { p0: 401, p1: 200, p2: 200 },
      "after a second rotation with grace: the first old plaintext stops, the replaced one works");
    info = await keyInfo(env, keyId);
    assertGraceUntil(info.grace_until, 2, second, "after a second rotation with 2h of grace");
    await assertGraceShown(page, keyId, info.grace_until, /^old key works in 2 h$/);
    await dismiss(page, p2);

    // 3. Again, without grace: every earlier plaintext stops at once, the grace note goes.
    const third = await regenerateInConsole(page, keyId, "");
    const p3 = third.plaintext;
    assert(![p0, p1, p2].includes(p3), "the third regenerated plaintext is new");
    assert(!/previous key works/.test(third.title), `the banner promises a grace that was not given: ${third.title}`);
    assertEqual(await statuses(env, { p0, p1, p2, p3 }), { p0: 401, p1: 401, p2: 401, p3: 200 },
      "after a rotation without grace: only the newest plaintext works");
    info = await keyInfo(env, keyId);
    assertEqual(info.grace_until, null, "grace_until after a rotation without grace");
    await keyRow(page, keyId).locator('[data-testid="key-grace"]').waitFor({ state: "detached" });
    await dismiss(page, p3);

    // Unknown to the gateway everywhere, not merely unprivileged (401, not 403).
    const refused = await api(env, "GET", `/key/info?key_id=${encodeURIComponent(keyId)}`, undefined, p2);
    assertEqual([refused.status, refused.body && refused.body.error ? "envelope" : refused.text],
      [401, "envelope"], "the replaced plaintext on a management route");
  }],
];
