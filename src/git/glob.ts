// Protected-path patterns (`tests/**`, `loopbox.yaml`, `*.lock`). Node's path.matchesGlob exists
// in Node 20.20 but is experimental there (prints an ExperimentalWarning) and missing before
// 20.17, while loopbox supports Node >= 20.9; minimatch/picomatch are not dependencies. So this
// is a small matcher with gitignore-like rules, erring towards matching more (it protects):
//   - `*` and `?` never cross `/`; `*` also matches dotfiles; `[abc]`/`[!a-z]` are classes;
//   - `**` as a whole segment matches any number of directories (`tests/**` matches `tests` too);
//   - a pattern without `/` (other than a trailing one) matches the base name at any depth:
//     `*.lock` protects `yarn.lock` and `sub/Cargo.lock`; a leading `/` anchors at the root;
//   - a path matches when it or any directory above it matches (`tests` protects `tests/a.ts`).
import { ConfigError } from '../common/errors.js';

const cache = new Map<string, RegExp>();

function compile(pattern: string): RegExp {
  const cached = cache.get(pattern);
  if (cached) return cached;
  let body = pattern.replace(/\/+$/, '');
  const anchored = body.includes('/');
  body = body.replace(/^\/+/, '');
  if (body === '') throw new ConfigError(`Expected a protected-path pattern, got ${JSON.stringify(pattern)}`);
  let re = '';
  for (let i = 0; i < body.length; i++) {
    const c = body[i] ?? '';
    if (c === '*' && body[i + 1] === '*' && (i === 0 || body[i - 1] === '/') && (i + 2 === body.length || body[i + 2] === '/')) {
      if (i + 2 === body.length) {
        // Trailing `/**`: everything below, and (with the ancestor rule) the directory itself.
        re = re.endsWith('/') ? `${re.slice(0, -1)}(?:/.*)?` : '.*';
      } else {
        re += '(?:[^/]+/)*';
      }
      i += 2; // also skips the `/` after `**`
    } else if (c === '*') {
      re += '[^/]*';
    } else if (c === '?') {
      re += '[^/]';
    } else if (c === '[') {
      const end = body.indexOf(']', i + 2);
      if (end === -1) {
        re += '\\[';
        continue;
      }
      let cls = body.slice(i + 1, end).replace(/\\/g, '\\\\');
      if (cls.startsWith('!')) cls = `^${cls.slice(1)}`;
      re += `(?!/)[${cls}]`;
      i = end;
    } else {
      re += c.replace(/[.+^${}()|\\\]]/g, '\\$&');
    }
  }
  const regex = new RegExp(anchored ? `^${re}$` : `^(?:.*/)?${re}$`, 's');
  cache.set(pattern, regex);
  return regex;
}

/** Whether a worktree path (posix separators, relative) matches one pattern, itself or via a parent directory. */
export function matchesPattern(filePath: string, pattern: string): boolean {
  const regex = compile(pattern);
  const parts = filePath.split('/');
  for (let n = parts.length; n > 0; n--) {
    if (regex.test(parts.slice(0, n).join('/'))) return true;
  }
  return false;
}

/** Whether a worktree path matches any of the patterns (e.g. is protected). */
export function matchesAny(filePath: string, patterns: readonly string[]): boolean {
  return patterns.some((p) => matchesPattern(filePath, p));
}
