// The console in headless Chromium (SPEC §10), run by tests/integration/browser.rs
// against a real gateway; exits non-zero when any check fails.
//
//   TOLLGATE_BASE_URL=… TOLLGATE_MASTER_KEY=… … node tests/browser/console.mjs
//
// Each flow is a list of named checks in flows/; a new screen adds a file there and one
// line below. Each check runs on a page of its own, in this order.

import { launch, runChecks, settings } from "./lib.mjs";
import { checks as session } from "./flows/session.mjs";
import { checks as keys } from "./flows/keys.mjs";
import { checks as grace } from "./flows/grace.mjs";
import { checks as teams } from "./flows/teams.mjs";
import { checks as feed } from "./flows/feed.mjs";
import { checks as audit } from "./flows/audit.mjs";
import { checks as style } from "./flows/style.mjs";

const FLOWS = [
  session,
  keys,
  grace,
  teams,
  feed,
  audit,
  style,
];

const env = settings();
const browser = await launch();
let failed;
try {
  failed = await runChecks(FLOWS.flat(), env, browser);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
