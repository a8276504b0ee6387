// What a person sees: a hovered tab's label stays readable (computed colours, WCAG
// contrast), and the screenshots the README shows.

import { join } from "node:path";
import { assert, contrastRatio, hex, seenColours, signedIn } from "../lib.mjs";

/** WCAG AA for normal text. */
const MIN_CONTRAST = 4.5;

export const checks = [
  ["a hovered tab's label stays readable", async ({ page, env }) => {
    await signedIn(page, env);
    const controls = page.locator("header.topbar button:visible");
    const count = await controls.count();
    assert(count >= 7, `the top bar has its tabs and buttons (found ${count})`);
    const failures = [];
    for (const scheme of ["light", "dark"]) {
      await page.emulateMedia({ colorScheme: scheme });
      for (let i = 0; i < count; i++) {
        const control = controls.nth(i);
        const label = await control.evaluate((el) =>
          `${el.textContent.trim()} (${el.dataset.view ? `tab ${el.dataset.view}` : `#${el.id}`})`);
        await control.hover();
        const seen = await control.evaluate(seenColours);
        assert(seen.hovered, `${label}, ${scheme}: under the pointer`);
        const ratio = contrastRatio(seen.text, seen.background);
        if (ratio < MIN_CONTRAST) {
          failures.push(`${label}, ${scheme}: ${hex(seen.text)} on ${hex(seen.background)}, ${ratio.toFixed(2)}:1`);
        }
      }
    }
    assert(!failures.length, `hovered labels below ${MIN_CONTRAST}:1:\n    ${failures.join("\n    ")}`);

    await page.emulateMedia({ colorScheme: "light" });
    await page.locator('.tab[data-view="teams"]').hover();
    await page.locator("header.topbar").screenshot({ path: join(env.screenshots, "console-tab-hover.png"), animations: "disabled" });
  }],

  ["the keys view, as a person sees it", async ({ page, env }) => {
    await signedIn(page, env);
    await page.locator('[data-testid="key-row"]', { hasText: env.proxyKeyAlias }).waitFor();
    await page.locator('.tab[data-view="teams"]').hover();
    await page.screenshot({ path: join(env.screenshots, "console-keys.png"), animations: "disabled" });
  }],
];
