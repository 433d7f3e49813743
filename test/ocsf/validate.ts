// A validator for OCSF events against the OCSF schema's own source files (dictionary.json,
// events/*, objects/*, profiles/*), as kept in test/fixtures/ocsf-schema-<version>/. It resolves
// `extends` and `$include` the way the OCSF server does, then checks every attribute of an event
// and of every object in it: known to the class or object (else an error: no invented fields),
// required ones present, `at_least_one` / `just_one` constraints, primitive types (with the
// dictionary's regex, max_len and range), enum values, arrays, and that attributes brought in by
// a profile are only used when `metadata.profiles` names it. Plus the class arithmetic:
// class_uid = category_uid * 1000 + class uid, type_uid = class_uid * 100 + activity_id.
import { readFileSync } from 'node:fs';
import path from 'node:path';

interface SchemaAttr {
  type?: string;
  is_array?: boolean;
  requirement?: string;
  enum?: Record<string, unknown>;
  profile?: string | null;
}

interface Resolved {
  name: string;
  attributes: Record<string, SchemaAttr>;
  constraints: { at_least_one?: string[]; just_one?: string[] };
  uid?: number;
  category?: string;
}

interface RawDef {
  name: string;
  extends?: string;
  uid?: number;
  category?: string;
  meta?: string;
  attributes?: Record<string, unknown>;
  constraints?: { at_least_one?: string[]; just_one?: string[] };
}

interface Dictionary {
  attributes: Record<string, SchemaAttr>;
  types: { attributes: Record<string, { type?: string; regex?: string; max_len?: number; range?: [number, number]; values?: unknown[] }> };
}

export class OcsfSchema {
  readonly version: string;
  readonly dictionary: Dictionary;
  readonly categories: Record<string, { uid: number }>;
  /** Every schema file read, relative to the root (the fixture set must hold them all). */
  readonly filesRead = new Set<string>();
  private readonly events = new Map<string, string>();
  private readonly cache = new Map<string, Resolved>();

  constructor(readonly root: string) {
    this.version = (this.json('version.json') as { version: string }).version;
    this.dictionary = this.json('dictionary.json') as Dictionary;
    this.categories = (this.json('categories.json') as { attributes: Record<string, { uid: number }> }).attributes;
    // Event class files we know of (name -> file); only these are loaded.
    for (const [name, file] of Object.entries({
      base_event: 'events/base_event.json',
      network: 'events/network/network.json',
      network_activity: 'events/network/network_activity.json',
      dns_activity: 'events/network/dns_activity.json',
      http_activity: 'events/network/http_activity.json',
    })) this.events.set(name, file);
  }

  private json(rel: string): unknown {
    this.filesRead.add(rel);
    try {
      return JSON.parse(readFileSync(path.join(this.root, rel), 'utf8'));
    } catch (error) {
      throw new Error(`OCSF schema file ${rel} not readable under ${this.root}: ${(error as Error).message}`);
    }
  }

  /** The event class with this class_uid (category uid * 1000 + class uid). */
  classByUid(classUid: number): Resolved {
    if (classUid === 0) return this.resolve('base_event', 'event');
    for (const name of this.events.keys()) {
      const c = this.resolve(name, 'event');
      if (c.uid !== undefined && c.category && this.categories[c.category] && c.name !== 'base_event') {
        if (this.categories[c.category]!.uid * 1000 + c.uid === classUid) return c;
      }
    }
    throw new Error(`class_uid ${classUid} is not one of the classes in this fixture set`);
  }

  resolve(name: string, kind: 'event' | 'object'): Resolved {
    const key = `${kind}:${name}`;
    const hit = this.cache.get(key);
    if (hit) return hit;
    const file = kind === 'event' ? this.events.get(name) : `objects/${name}.json`;
    if (!file) throw new Error(`unknown event class ${name}`);
    const raw = this.json(file) as RawDef;
    const parent = raw.extends ? this.resolve(raw.extends, kind) : undefined;
    const attributes: Record<string, SchemaAttr> = {};
    for (const [k, v] of Object.entries(parent?.attributes ?? {})) attributes[k] = { ...v };
    const merge = (attrs: Record<string, unknown> | undefined, profile: string | null): void => {
      for (const [k, v] of Object.entries(attrs ?? {})) {
        if (k === '$include') {
          for (const inc of v as string[]) {
            const included = this.json(inc) as RawDef;
            merge(included.attributes, included.meta === 'profile' ? included.name : profile);
          }
          continue;
        }
        const def = v as SchemaAttr;
        const prev = attributes[k];
        attributes[k] = {
          ...prev,
          ...def,
          enum: prev?.enum || def.enum ? { ...prev?.enum, ...def.enum } : undefined,
          profile: prev ? (prev.profile ?? null) : profile,
        };
      }
    };
    merge(raw.attributes, null);
    const resolved: Resolved = {
      name,
      attributes,
      constraints: { ...parent?.constraints, ...raw.constraints },
      ...(raw.uid !== undefined ? { uid: raw.uid } : {}),
      ...((raw.category ?? parent?.category) ? { category: raw.category ?? parent?.category } : {}),
    };
    this.cache.set(key, resolved);
    return resolved;
  }

  /** Every problem with one event, each naming the path of the bad attribute. Empty = valid. */
  validate(event: Record<string, unknown>): string[] {
    const errors: string[] = [];
    const classUid = event.class_uid;
    if (typeof classUid !== 'number') return ['class_uid: missing or not a number'];
    let cls: Resolved;
    try {
      cls = this.classByUid(classUid);
    } catch (error) {
      return [(error as Error).message];
    }
    const metadata = (event.metadata ?? {}) as { profiles?: unknown; version?: unknown };
    const profiles = new Set(Array.isArray(metadata.profiles) ? (metadata.profiles as string[]) : []);
    if (metadata.version !== this.version) errors.push(`metadata.version: ${JSON.stringify(metadata.version)}, schema is ${this.version}`);
    const categoryUid = cls.category ? (this.categories[cls.category]?.uid ?? 0) : 0;
    if (event.category_uid !== categoryUid) errors.push(`category_uid: ${JSON.stringify(event.category_uid)}, class ${cls.name} is in category ${categoryUid}`);
    if (typeof event.activity_id === 'number' && event.type_uid !== classUid * 100 + event.activity_id) {
      errors.push(`type_uid: ${JSON.stringify(event.type_uid)}, expected class_uid*100+activity_id = ${classUid * 100 + event.activity_id}`);
    }
    this.checkObject(event, cls, cls.name, profiles, errors);
    return errors;
  }

  private checkObject(value: Record<string, unknown>, def: Resolved, where: string, profiles: Set<string>, errors: string[]): void {
    for (const [k, attr] of Object.entries(def.attributes)) {
      // A profile's attributes apply only when the event names the profile.
      if (attr.profile && !profiles.has(attr.profile)) continue;
      if (attr.requirement === 'required' && (value[k] === undefined || value[k] === null)) errors.push(`${where}.${k}: required, missing`);
    }
    const present = (k: string): boolean => value[k] !== undefined && value[k] !== null;
    if (def.constraints.at_least_one && !def.constraints.at_least_one.some(present)) errors.push(`${where}: needs at least one of ${def.constraints.at_least_one.join(', ')}`);
    if (def.constraints.just_one && def.constraints.just_one.filter(present).length !== 1) errors.push(`${where}: needs exactly one of ${def.constraints.just_one.join(', ')}`);
    for (const [k, v] of Object.entries(value)) {
      const attr = def.attributes[k];
      if (!attr) {
        errors.push(`${where}.${k}: not an attribute of ${def.name}`);
        continue;
      }
      if (attr.profile && !profiles.has(attr.profile)) errors.push(`${where}.${k}: comes from profile ${attr.profile}, which metadata.profiles does not name`);
      const dict = this.dictionary.attributes[k] ?? {};
      const type = attr.type ?? dict.type;
      const isArray = attr.is_array ?? dict.is_array ?? false;
      // class_uid and category_uid carry base_event's placeholder enum; validate() checks them.
      const enumValues = k === 'class_uid' || k === 'category_uid' ? undefined : attr.enum || dict.enum ? { ...dict.enum, ...attr.enum } : undefined;
      if (!type) {
        errors.push(`${where}.${k}: no type in the dictionary`);
        continue;
      }
      if (isArray) {
        if (!Array.isArray(v)) errors.push(`${where}.${k}: expected an array`);
        else v.forEach((item, i) => this.checkValue(item, type, enumValues, `${where}.${k}[${i}]`, profiles, errors));
      } else {
        this.checkValue(v, type, enumValues, `${where}.${k}`, profiles, errors);
      }
    }
  }

  private checkValue(v: unknown, type: string, enumValues: Record<string, unknown> | undefined, where: string, profiles: Set<string>, errors: string[]): void {
    if (v === null) return errors.push(`${where}: null (leave the attribute out instead)`), undefined;
    if (type === 'object' || type === 'json_t') return;
    if (!type.endsWith('_t')) {
      if (typeof v !== 'object' || Array.isArray(v)) return errors.push(`${where}: expected a ${type} object`), undefined;
      this.checkObject(v as Record<string, unknown>, this.resolve(type, 'object'), where, profiles, errors);
      return;
    }
    const types = this.dictionary.types.attributes;
    const t = types[type];
    if (!t) return errors.push(`${where}: unknown type ${type}`), undefined;
    const base = t.type ?? type;
    const baseBase = types[base]?.type ?? base;
    if (baseBase === 'string_t' || base === 'string_t') {
      if (typeof v !== 'string') return errors.push(`${where}: expected a string (${type}), got ${JSON.stringify(v)}`), undefined;
      if (t.max_len !== undefined && v.length > t.max_len) errors.push(`${where}: longer than ${t.max_len}`);
      if (t.regex && !new RegExp(t.regex).test(v)) errors.push(`${where}: ${JSON.stringify(v)} does not match ${type}`);
    } else if (['integer_t', 'long_t'].includes(baseBase) || ['integer_t', 'long_t'].includes(base)) {
      if (typeof v !== 'number' || !Number.isInteger(v)) return errors.push(`${where}: expected an integer (${type}), got ${JSON.stringify(v)}`), undefined;
      if (t.range && (v < t.range[0] || v > t.range[1])) errors.push(`${where}: ${v} outside ${t.range.join('..')}`);
    } else if (base === 'float_t') {
      if (typeof v !== 'number') errors.push(`${where}: expected a number`);
    } else if (base === 'boolean_t') {
      if (typeof v !== 'boolean') errors.push(`${where}: expected a boolean`);
    } else {
      errors.push(`${where}: type ${type} not handled by this validator`);
    }
    if (enumValues && !Object.hasOwn(enumValues, typeof v === 'number' || typeof v === 'string' ? String(v) : JSON.stringify(v))) errors.push(`${where}: ${JSON.stringify(v)} is not one of its enum values (${Object.keys(enumValues).join(', ')})`);
  }
}

export const OCSF_FIXTURE = path.resolve(import.meta.dirname, '..', 'fixtures', 'ocsf-schema-1.8.0');
