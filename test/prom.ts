// Reads Prometheus text exposition with a real parser (parse-prometheus-text-format), for the
// unit and Docker tests of `loopbox serve`'s /metrics.
import parsePrometheusTextFormat, { type PromFamily, type PromSample } from 'parse-prometheus-text-format';

export type Scrape = Map<string, PromFamily>;

export function parseScrape(text: string): Scrape {
  return new Map(parsePrometheusTextFormat(text).map((f) => [f.name, f]));
}

function matches(sample: PromSample, labels: Record<string, string>): boolean {
  return Object.entries(labels).every(([k, v]) => sample.labels?.[k] === v);
}

/** The samples of a family whose labels include `labels`. */
export function samples(scrape: Scrape, name: string, labels: Record<string, string> = {}): PromSample[] {
  return (scrape.get(name)?.metrics ?? []).filter((s) => matches(s, labels));
}

/** Sum of the values (counters, gauges) matching `labels`; 0 when there are none. */
export function value(scrape: Scrape, name: string, labels: Record<string, string> = {}): number {
  return samples(scrape, name, labels).reduce((n, s) => n + Number(s.value ?? 0), 0);
}

/**
 * One series of a labelled histogram. parse-prometheus-text-format folds every series of a
 * histogram family into one and keeps `_sum`/`_count` only when they have no labels, so it is
 * handed the lines of the one series asked for, with those labels taken off.
 */
export function histogram(text: string, name: string, labels: Record<string, string>): PromSample | undefined {
  const pairs = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  const series = text
    .split('\n')
    .filter((line) => line.startsWith(`# TYPE ${name} `) || (/^\w+\{/.test(line) && [`${name}_bucket{`, `${name}_sum{`, `${name}_count{`].some((p) => line.startsWith(p)) && pairs.every((p) => line.includes(p))))
    .map((line) => pairs.reduce((l, p) => l.replace(new RegExp(`,?${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`), ''), line).replace('{,', '{').replace(/\{\}/, ''));
  return parseScrape(series.join('\n') + '\n').get(name)?.metrics[0];
}
