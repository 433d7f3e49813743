// The layers of src/, written once: `npm run lint` runs dependency-cruiser with these rules, and
// docs/architecture.md draws the same picture. A module may import from its own layer and from
// any layer below it, never from one above; no import cycles at all (type-only imports count).
// Several rooms in one layer do not import each other in a circle either (no-circular sees it).

/** Top to bottom. Each entry is one layer: folders under src/ (or root files) side by side. */
const LAYERS = [
  ['cli'], //                      commander wiring; imports only the library (src/index.ts)
  ['index.ts'], //                 the public library
  ['demo', 'report', 'digest', 'doctor.ts', 'cluster'], // built on the loop: the demo, the HTML report, the morning digest, doctor, loops as Swarm jobs
  ['runner'], //                   the loop runner (pool, slots), status, stop; implements LoopStarter
  ['deliver'], //                  after a loop: push, pull request, notify (host side)
  ['triggers'], //                 cron and webhooks; they start loops through LoopStarter only
  ['loop'], //                     the loop: iterations, brakes, state, agents, task files
  ['backend', 'review'], //        where containers run (ContainerBackend); the reviewer model's verdict
  ['config'], //                   the schema names the parts below it (image names, ...)
  ['verify'], //                   the clean verification container
  ['sandbox'], //                  sentry + agent
  ['model', 'git'], //             llama-server lifecycle; hardened git
  ['images'], //                   image builds and names
  ['egress'], //                   sentry output → audit records
  ['audit'], //                    the audit record, the chained log, query, OCSF
  ['runs'], //                     run records, liveness, gc
  ['docker'], //                   the Docker facade, labels and names
  ['common'], //                   errors, ids, paths, logger, semaphore
];

const pathOf = (name) => (name.endsWith('.ts') ? `^src/${name.replace('.', '\\.')}$` : `^src/${name}/`);
const anyOf = (names) => `(${names.map(pathOf).join('|')})`;

const layerRules = LAYERS.slice(1).map((layer, i) => ({
  name: `layer-${layer.join('+')}`,
  comment: `${layer.join(', ')} may import only from its own layer and the layers below it (see LAYERS in .dependency-cruiser.mjs)`,
  severity: 'error',
  from: { path: anyOf(layer) },
  to: { path: anyOf(LAYERS.slice(0, i + 1).flat()) },
}));

const everyRoom = LAYERS.flat();

/** @type {import('dependency-cruiser').IConfiguration} */
export default {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'No import cycles, type-only ones included: each module can be read before the ones that use it.',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true },
    },
    ...layerRules,
    {
      name: 'cli-only-through-the-library',
      comment: 'The CLI is a thin layer over the public library: it imports src/index.ts, never the modules behind it.',
      severity: 'error',
      from: { path: '^src/cli/' },
      to: { path: '^src/', pathNot: '^src/(cli/|index\\.ts$)' },
    },
    {
      name: 'every-room-has-a-layer',
      comment: 'A new folder under src/ needs its place in LAYERS (and in docs/architecture.md).',
      severity: 'error',
      from: { path: '^src/', pathNot: anyOf(everyRoom) },
      to: {},
    },
    {
      name: 'not-to-unresolvable',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default', 'types'] },
  },
};
