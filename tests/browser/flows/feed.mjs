// The live feed: a request proxied with a virtual key shows up, with the server that
// answered it (SPEC §10: time, key, model, route, server, status, tokens, latency).

import { join } from "node:path";
import { assert, assertEqual, openTab, signedIn } from "../lib.mjs";

const COLUMNS = ["Time", "Key", "Model", "Route", "Server", "Status", "Tokens", "Latency"];

export const checks = [
  ["a proxied request arrives in the live feed, with its server", async ({ page, env }) => {
    await signedIn(page, env);
    await openTab(page, "live");
    // The socket is open (and subscribed) once the pill says so.
    await page.locator('#feed-pill[data-state="live"]').waitFor();
    const headers = (await page.locator("#view-live thead th").allTextContents()).map((t) => t.trim());
    assertEqual(headers, COLUMNS, "the feed's columns");

    const response = await fetch(`${env.base}/api/chat`, {
      method: "POST",
      headers: { Authorization: `Bearer ${env.proxyKey}`, "Content-Type": "application/json" },
      body: JSON.stringify({ model: env.model, messages: [{ role: "user", content: "hello" }], stream: false }),
    });
    assertEqual(response.status, 200, "the proxied request's status");
    await response.arrayBuffer();
    const requestId = response.headers.get("x-request-id");
    assert(requestId, "the response carries X-Request-ID");

    const row = page.locator(`[data-testid="live-row"][data-request-id="${requestId}"]`);
    await row.waitFor();
    const cell = async (name) => (await row.locator(`[data-testid="live-${name}"]`).textContent()).trim();
    assert((await cell("key")).includes(env.proxyKeyAlias), `the key column: ${await cell("key")}`);
    assertEqual(await cell("model"), env.model, "the model column");
    assertEqual(await cell("route"), "/api/chat", "the route column");
    assertEqual(await cell("server"), env.server, "the server column");
    assertEqual(await cell("status"), "success · 200", "the status column");
    assert(/^\d[\d,]*$/.test(await cell("tokens")) && (await cell("tokens")) !== "0", `the tokens column: ${await cell("tokens")}`);
    assert(/^\d+(\.\d+)? m?s$/.test(await cell("latency")), `the latency column: ${await cell("latency")}`);
    // Each cell sits under its own header.
    const serverIndex = await row.locator("td").evaluateAll(
      (tds) => tds.findIndex((td) => td.dataset.testid === "live-server"));
    assertEqual(COLUMNS[serverIndex], "Server", "the column the server cell is in");

    await page.screenshot({ path: join(env.screenshots, "console-live.png"), animations: "disabled" });
  }],
];
