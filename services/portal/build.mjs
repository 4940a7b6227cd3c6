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
