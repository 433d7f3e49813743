// `loopbox digest [--since 12h] [--format text|html|json] [-o FILE]`: the morning read-out of
// every loop run in a window, errors first (src/digest/).
import { writeFile } from 'node:fs/promises';
import { type Command, InvalidArgumentError } from 'commander';
import { gatherDigest, packageVersion, renderDigestHtml, renderDigestText } from '../index.js';
import { out } from './context.js';
import { duration } from './options.js';

const FORMATS = ['text', 'html', 'json'] as const;
type Format = (typeof FORMATS)[number];

function format(value: string): Format {
  if (!(FORMATS as readonly string[]).includes(value)) throw new InvalidArgumentError(`expected one of ${FORMATS.join(', ')}, got "${value}"`);
  return value as Format;
}

export function registerDigest(program: Command): void {
  program
    .command('digest')
    .description('what ran since then: every loop\'s end state and why, iterations, time, tokens, verified commit, pushed branch/PR, blocked attempts, audit chain, and what needs a human (errors first)')
    .option('--since <duration>', 'runs active within this long before now (default: 12h)', duration)
    .option('--format <format>', 'text, html (self-contained page) or json', format, 'text' as Format)
    .option('-o, --output <file>', 'write to this file instead of stdout')
    .addHelpText('after', '\nExample:\n  loopbox digest --since 12h --format html -o ~/morning.html\n')
    .action(async (opts: { since?: number; format: Format; output?: string }) => {
      const digest = await gatherDigest({ since: new Date(Date.now() - (opts.since ?? 12 * 3_600_000)), version: packageVersion() });
      const text = opts.format === 'json' ? `${JSON.stringify(digest, null, 2)}\n` : opts.format === 'html' ? renderDigestHtml(digest) : renderDigestText(digest);
      if (opts.output) {
        await writeFile(opts.output, text);
        out(opts.output);
      } else {
        process.stdout.write(text);
      }
    });
}
