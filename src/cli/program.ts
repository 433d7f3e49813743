// The program: its name, global options and one register call per command group, in the order
// `loopbox --help` lists them. Each group lives in its own file (src/cli/<group>.ts) and is
// commander wiring only: parse options, call the library, print. No process.exit here.
import { Command } from 'commander';
import { packageVersion } from '../index.js';
import { registerAudit } from './audit-query.js';
import { registerAuditChain } from './audit.js';
import type { CliContext } from './context.js';
import { registerDemo } from './demo.js';
import { registerDigest } from './digest.js';
import { registerDoctor } from './doctor.js';
import { registerGc } from './gc.js';
import { registerImages } from './images.js';
import { registerInit } from './init.js';
import { registerModel } from './model.js';
import { type ProgramResult, example } from './options.js';
import { registerReport } from './report.js';
import { registerRun, registerStatusAndStop } from './run.js';
import { registerSandbox } from './sandbox.js';
import { registerSwarm } from './swarm.js';
import { registerTriggers } from './triggers.js';

export function buildProgram(ctx: CliContext, result: ProgramResult): Command {
  const program = new Command('loopbox')
    .description('Run coding-agent loops in hardened Docker sandboxes against a local model, with verified commits and an egress audit log.')
    .version(packageVersion())
    .option('-c, --config <file>', 'config file (default: ./loopbox.yaml)')
    .showHelpAfterError()
    .addHelpText('after', example('loopbox doctor'));

  const configFile = (): string | undefined => program.opts<{ config?: string }>().config;

  registerDoctor(program, ctx, configFile);
  registerImages(program, ctx, configFile);
  registerGc(program, ctx, result);
  registerSandbox(program, ctx, result, configFile);
  registerAuditChain(registerAudit(program, ctx, result), result);
  registerReport(program);
  registerDigest(program);
  registerRun(program, ctx, result, configFile);
  registerStatusAndStop(program, ctx, result);
  registerTriggers(program, ctx, configFile);
  registerSwarm(program, ctx, result, configFile);
  registerDemo(program, ctx, result, configFile);
  registerInit(program);
  registerModel(program, ctx, configFile);

  return program;
}
