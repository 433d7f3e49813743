import path from 'node:path';
import { defineConfig } from 'vitest/config';

// Two projects: `unit` needs no Docker; `docker` runs against the real engine, images and model
// (its globalSetup builds the images once per run and makes the fixture model).
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 20_000,
        },
      },
      {
        test: {
          name: 'docker',
          include: ['test/docker/**/*.test.ts'],
          globalSetup: ['test/docker/global-setup.ts'],
          testTimeout: 240_000,
          hookTimeout: 900_000,
          fileParallelism: false,
          // Tests keep their run records, audit logs and the fixture model out of ~/.local/state.
          env: { LOOPBOX_STATE_DIR: path.resolve(import.meta.dirname, '.loopbox', 'test-state') },
        },
      },
    ],
  },
});
