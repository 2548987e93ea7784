// Paths of files that ship with the package (fixtures, the bundled model), found from this
// module's location so they resolve the same from src/ (tsc's dist/src/...) and the CLI.

import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The package root: the nearest folder above this module that holds package.json. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error("cannot find the tsglang package root");
    dir = up;
  }
  return dir;
}

export function fixturePath(name: string): string {
  return join(packageRoot(), "test", "fixtures", name);
}

/** The bundled demo checkpoint, used when no --model-path is given. */
export function defaultModelPath(): string {
  return join(packageRoot(), "models", "llama4-demo");
}
