// Signing in: the master key opens the console; a wrong credential shows an error and
// nothing else.

import { assert, assertEqual, signIn, signedIn } from "../lib.mjs";

export const checks = [
  ["sign in with the master key", async ({ page, env }) => {
    await signedIn(page, env);
    assertEqual(await page.locator("#who").textContent(), "master key", "who is signed in");
    assert(await page.locator("#signin").isHidden(), "the sign-in form is gone");
    // The keys view shows what the API has: the key the Rust test made.
    await page.locator('[data-testid="key-row"]', { hasText: env.proxyKeyAlias }).waitFor();
    // The session survives a reload (session storage), without the form.
    await page.reload();
    await page.locator('[data-testid="key-row"]', { hasText: env.proxyKeyAlias }).waitFor();
    assert(await page.locator("#signin").isHidden(), "still signed in after a reload");
  }],

  ["a wrong credential shows an error and no data", async ({ page, env }) => {
    const cases = [
      // Not a credential the gateway knows: 401.
      ["an unknown key", "sk-not-a-key-of-this-gateway-0000", /./],
      // A real virtual key, but not an admin: 403, said so.
      ["a virtual key", env.proxyKey, /not an admin/i],
    ];
    for (const [what, credential, message] of cases) {
      await signIn(page, env, credential);
      const error = page.locator("#signin-error");
      await error.waitFor({ state: "visible" });
      const text = (await error.textContent()).trim();
      assert(message.test(text), `${what}: the error says ${JSON.stringify(text)}`);
      assert(await page.locator("#tabs").isHidden(), `${what}: no tabs`);
      assert(await page.locator("#session").isHidden(), `${what}: no session bar`);
      assertEqual(await page.locator(".view:not([hidden])").count(), 0, `${what}: views shown`);
      for (const body of ["keys-body", "teams-body", "mappings-body", "live-body"]) {
        assertEqual(await page.locator(`#${body} tr`).count(), 0, `${what}: rows in #${body}`);
      }
      const html = await page.content();
      assert(!html.includes(env.proxyKeyAlias), `${what}: the page shows a key's alias`);
      const stored = await page.evaluate(() => sessionStorage.length);
      assertEqual(stored, 0, `${what}: entries in session storage`);
    }
  }],
];
