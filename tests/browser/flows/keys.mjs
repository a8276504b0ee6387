// Virtual keys: the plaintext is shown once; limits, block and unblock reach the API.

import { apiOk, assert, assertEqual, signedIn, submitDialog, unique } from "../lib.mjs";

const keyRow = (page, alias) => page.locator('[data-testid="key-row"]', { hasText: alias });

/** A key made through the API (not the console): `{key, key_id}`. */
async function apiKey(env, alias) {
  return apiOk(env, "POST", "/key/generate", { key_alias: alias });
}

async function keyInfo(env, keyId) {
  return (await apiOk(env, "GET", `/key/info?key_id=${encodeURIComponent(keyId)}`)).info;
}

/** Fails when `plaintext` is anywhere in the page: its markup or any field's value. */
async function assertNotShown(page, plaintext, when) {
  const html = await page.content();
  assert(!html.includes(plaintext), `${when}: the plaintext is in the page's markup`);
  const values = await page.evaluate(() =>
    Array.from(document.querySelectorAll("input, textarea"), (el) => el.value));
  assert(!values.some((v) => v.includes(plaintext)), `${when}: the plaintext is in a field`);
}

/** Creates a key with the console's form; the plaintext its banner shows. */
async function createInConsole(page, alias) {
  await page.locator("#keys-new").click();
  await page.locator("#dialog[open]").waitFor();
  await page.locator("#f-key_alias").fill(alias);
  await submitDialog(page);
  await page.locator("#secret").waitFor({ state: "visible" });
  const plaintext = await page.locator("#secret-value").inputValue();
  assert(/^sk-[A-Za-z0-9_-]{20,}$/.test(plaintext), `the banner shows a key: ${JSON.stringify(plaintext)}`);
  await keyRow(page, alias).waitFor();
  const rowText = await keyRow(page, alias).textContent();
  assert(!rowText.includes(plaintext), "the table shows the plaintext");
  return plaintext;
}

export const checks = [
  ["create a key and see its plaintext exactly once", async ({ page, env }) => {
    await signedIn(page, env);

    // Closed with "Done": gone from the page.
    const alias = unique("browser-made");
    const plaintext = await createInConsole(page, alias);
    const info = (await apiOk(env, "GET", `/key/info?key=${encodeURIComponent(plaintext)}`)).info;
    assertEqual(info.key_alias, alias, "the shown plaintext is the new key's");
    await page.locator("#secret-done").click();
    await page.locator("#secret").waitFor({ state: "hidden" });
    await assertNotShown(page, plaintext, "after Done");
    await page.reload();
    await keyRow(page, alias).waitFor();
    assert(await page.locator("#secret").isHidden(), "the banner is back after a reload");
    await assertNotShown(page, plaintext, "after Done and a reload");

    // Left open and the page reloaded: gone as well (never stored).
    const other = unique("browser-made");
    const second = await createInConsole(page, other);
    await page.reload();
    await keyRow(page, other).waitFor();
    assert(await page.locator("#secret").isHidden(), "the banner survived a reload");
    await assertNotShown(page, second, "after a reload");
    const storage = await page.evaluate(() => JSON.stringify(Object.assign({}, sessionStorage, localStorage)));
    assert(!storage.includes(second), "the plaintext is in browser storage");
  }],

  ["edit a key's limits", async ({ page, env }) => {
    const alias = unique("browser-limits");
    const made = await apiKey(env, alias);
    await signedIn(page, env);
    await keyRow(page, alias).getByRole("button", { name: "Edit", exact: true }).click();
    await page.locator("#dialog[open]").waitFor();
    await page.locator("#f-rpm_limit").fill("42");
    await page.locator("#f-tpm_limit").fill("9000");
    await page.locator("#f-max_parallel_requests").fill("3");
    await submitDialog(page);
    await keyRow(page, alias).filter({ hasText: "42 req/min" }).waitFor();
    const rowText = await keyRow(page, alias).textContent();
    assert(rowText.includes("3 parallel"), `the row shows the parallel limit: ${rowText}`);
    const info = await keyInfo(env, made.key_id);
    assertEqual(
      [info.rpm_limit, info.tpm_limit, info.max_parallel_requests],
      [42, 9000, 3],
      "rpm, tpm and parallel limits in /key/info"
    );
    assertEqual(info.key_alias, alias, "the alias, untouched");
  }],

  ["block and unblock a key", async ({ page, env }) => {
    const alias = unique("browser-block");
    const made = await apiKey(env, alias);
    await signedIn(page, env);
    const status = keyRow(page, alias).locator('[data-testid="key-status"]');
    assertEqual((await status.textContent()).trim(), "Active", "status before");

    await keyRow(page, alias).getByRole("button", { name: "Block", exact: true }).click();
    await status.filter({ hasText: "Blocked" }).waitFor();
    assertEqual((await keyInfo(env, made.key_id)).blocked, true, "blocked in /key/info");

    await keyRow(page, alias).getByRole("button", { name: "Unblock", exact: true }).click();
    await status.filter({ hasText: "Active" }).waitFor();
    assertEqual((await keyInfo(env, made.key_id)).blocked, false, "blocked in /key/info after unblocking");
  }],
];
