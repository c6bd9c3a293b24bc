// ES module entry point: `import { ProgressClient } from "/static/progress-client.mjs"`.
// The implementation is the classic script beside this file (so that <script src> works too); importing it for
// its side effect defines globalThis.ProgressClient, which is re-exported here.
import "./progress-client.js";

export const ProgressClient = globalThis.ProgressClient;
export default ProgressClient;
