/// <reference types="vitest" />
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The build is embedded in the vramtrace binary (vramtrace/src/serve/web.rs): everything it
// needs, fonts included, is in dist/; nothing is fetched from elsewhere at run time.
export default defineConfig({
  plugins: [react()],
  build: {
    outDir: "dist",
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 1200,
    rollupOptions: {
      output: {
        manualChunks: { charts: ["recharts"], motion: ["framer-motion"] },
      },
    },
  },
  server: {
    proxy: {
      "/api": "http://127.0.0.1:9477",
      "/ws": { target: "ws://127.0.0.1:9477", ws: true },
    },
  },
  test: {
    environment: "jsdom",
    setupFiles: ["src/test/setup.ts"],
    include: ["src/**/*.test.{ts,tsx}"],
    css: false,
  },
});
