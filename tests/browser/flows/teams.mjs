// Teams and JWT claim → key mappings, created with the console's forms.

import { apiOk, assertEqual, openTab, signedIn, submitDialog, unique } from "../lib.mjs";

export const checks = [
  ["create a team and a mapping", async ({ page, env }) => {
    const teamId = unique("browser-team");
    const key = await apiOk(env, "POST", "/key/generate", { key_alias: unique("browser-mapped") });
    await signedIn(page, env);

    await openTab(page, "teams");
    await page.locator("#teams-new").click();
    await page.locator("#dialog[open]").waitFor();
    await page.locator("#f-team_id").fill(teamId);
    await page.locator("#f-team_alias").fill("Browser team");
    await page.locator("#f-rpm_limit").fill("120");
    await submitDialog(page);
    await page.locator(`[data-testid="team-row"][data-team-id="${teamId}"]`).waitFor();
    const team = (await apiOk(env, "GET", `/team/info?team_id=${encodeURIComponent(teamId)}`)).team_info;
    assertEqual([team.team_alias, team.rpm_limit], ["Browser team", 120], "the team in /team/info");

    await openTab(page, "mappings");
    const claimValue = `${teamId}@example.com`;
    await page.locator("#mappings-new").click();
    await page.locator("#dialog[open]").waitFor();
    await page.locator("#f-jwt_claim_name").fill("email");
    await page.locator("#f-jwt_claim_value").fill(claimValue);
    await page.locator("#f-key_id").selectOption(key.key_id);
    await page.locator("#f-description").fill("made in the browser");
    await submitDialog(page);
    await page.locator('[data-testid="mapping-row"]', { hasText: claimValue }).waitFor();
    const list = await apiOk(env, "GET", "/jwt/key/mapping/list?page=1&size=100");
    const found = list.mappings.filter((m) => m.jwt_claim_value === claimValue);
    assertEqual(
      found.map((m) => [m.jwt_claim_name, m.key_id, m.description, m.is_active]),
      [["email", key.key_id, "made in the browser", true]],
      "the mapping in /jwt/key/mapping/list"
    );
  }],
];
