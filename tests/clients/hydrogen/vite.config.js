// The Hydrogen app Myelin's browser test serves. The SDK's service worker (for authenticated
// media) must sit at the site root, so its lib-build directory is the public directory.
import { defineConfig } from "vite";

export default defineConfig({
    base: "./",
    publicDir: "node_modules/hydrogen-view-sdk/lib-build",
    build: { outDir: "dist", emptyOutDir: true, chunkSizeWarningLimit: 8000 },
    logLevel: "warn",
});
