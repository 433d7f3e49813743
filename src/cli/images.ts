// `loopbox images build|list`: the project images (sentry, agent, llama-cpu, verify-<toolchain>).
// Wiring only; the builds are in src/images.
import { type Command, Option } from 'commander';
import { buildImages, formatTable, IMAGE_NAMES, type ImageName, imageRef, loadConfig, type Toolchain, toolchainImage, TOOLCHAINS } from '../index.js';
import { type CliContext, err, out } from './context.js';
import { collect, example } from './options.js';

export function registerImages(program: Command, ctx: CliContext, configFile: () => string | undefined): void {
  const images = program.command('images').description('build and list the project images');
  images
    .command('build')
    .description('build every project image (sentry, agent, llama-cpu), skipping those whose inputs are unchanged')
    .option('--ca-cert <file>', 'extra CA certificate (PEM) for build steps that fetch packages; repeatable; added to images.caCerts and NODE_EXTRA_CA_CERTS; never left in the image', collect, [])
    .option('--offline', 'never try a registry: make missing base images with debootstrap')
    .option('--mirror <url>', 'Debian mirror for debootstrap (default: this machine\'s apt sources)')
    .addOption(new Option('--only <name>', 'build only this image; repeatable').choices([...IMAGE_NAMES]).argParser(collect))
    .addOption(
      new Option('--toolchain <name>', 'also build loopbox/verify-<name>: the agent image plus that toolchain from Debian packages, for verify.image; repeatable')
        .choices([...TOOLCHAINS])
        .argParser(collect),
    )
    .option('--force', 'rebuild even when inputs are unchanged')
    .addHelpText('after', `${example('loopbox images build --ca-cert /etc/ssl/certs/corp-proxy.pem --offline')}  loopbox images build --toolchain python   # then verify.image: ${imageRef('verify-python')}\n`)
    .action(async (opts: { caCert: string[]; offline?: boolean; mirror?: string; only?: ImageName[]; toolchain?: Toolchain[]; force?: boolean }) => {
      const { config } = await loadConfig({ file: configFile() });
      const built = await buildImages(ctx.docker, {
        caCerts: [...config.images.caCerts, ...opts.caCert],
        offline: opts.offline ?? false,
        mirror: opts.mirror ?? config.images.mirror,
        only: opts.only,
        toolchains: opts.toolchain,
        force: opts.force ?? false,
        onLine: (line) => err(line),
      });
      out(formatTable(['IMAGE', 'STATUS', 'SECONDS'], built.map((b) => [b.ref, b.status, b.seconds.toFixed(1)])));
    });

  images
    .command('list')
    .description('the project images: present or missing, and their inputs hash')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const rows = [];
      for (const name of [...IMAGE_NAMES, ...TOOLCHAINS.map(toolchainImage)]) {
        const ref = imageRef(name);
        const found = await ctx.docker.findImage(ref);
        // Toolchain images are optional: listed only once built.
        if (!found && !(IMAGE_NAMES as readonly string[]).includes(name)) continue;
        rows.push({ name, ref, present: Boolean(found), inputsHash: found?.labels['loopbox.inputs-hash']?.slice(0, 12) ?? null });
      }
      if (opts.json) return out(JSON.stringify(rows, null, 2));
      out(formatTable(['IMAGE', 'PRESENT', 'INPUTS'], rows.map((r) => [r.ref, r.present ? 'yes' : 'no (loopbox images build)', r.inputsHash ?? '-'])));
    });
}
