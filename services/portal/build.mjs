// Bundles the portal with esbuild into dist/: portal.js, index.html, styles.css. The
// config.json beside them is written by whoever serves the portal (the demo does).
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: ["src/main.ts"],
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  sourcemap: true,
  outfile: "dist/portal.js",
  logLevel: "warning",
});
copyFileSync("index.html", "dist/index.html");
copyFileSync("styles.css", "dist/styles.css");

// The end-to-end test, for Node (it imports the generated TypeScript).
await build({
  entryPoints: ["e2e/portal.e2e.mjs"],
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  packages: "external",
  outfile: ".e2e/portal.e2e.mjs",
  logLevel: "warning",
});
