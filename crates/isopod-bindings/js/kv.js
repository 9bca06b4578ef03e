// The KV binding: `env.BINDING` of a KV namespace, as Workers defines it
// (get, getWithMetadata, put, delete, list). Each call is one async op;
// the store applies KV's limits and gives Workers' messages.
//
// Invariant: an object holds only its binding's index; the ops find the
// namespace among the isolate's own app's bindings.
import { core, primordials } from "ext:core/mod.js";
import { bufferBytes } from "ext:isopod_bindings/bytes.js";

const {
  ArrayIsArray,
  ArrayPrototypeIncludes,
  Map: MapCtor,
  MapPrototypeSet,
  Number: NumberCtor,
  Symbol,
  ArrayPrototypeMap,
  JSONParse,
  JSONStringify,
  ObjectPrototypeIsPrototypeOf,
  String: StringCtor,
  TypeError,
  TypedArrayPrototypeGetBuffer,
  TypedArrayPrototypeGetByteLength,
  TypedArrayPrototypeGetByteOffset,
  Uint8Array,
  ArrayBufferPrototypeSlice,
  ObjectFreeze,
} = primordials;

const {
  op_isopod_kv_get,
  op_isopod_kv_get_many,
  op_isopod_kv_put,
  op_isopod_kv_delete,
  op_isopod_kv_list,
} = core.ops;

// The web classes the binding uses, handed over by the global scope once
// it has made them (they are loaded after this module).
let web;
let encoder;
let decoder;
export function configureKv(classes) {
  web = classes;
  encoder = new web.TextEncoder();
  decoder = new web.TextDecoder();
}

const kToken = Symbol("kvBinding");
const TYPES = ["text", "json", "arrayBuffer", "stream"];

function typeOf(options) {
  const type = typeof options === "string"
    ? options
    : (options !== null && typeof options === "object" && options.type !== undefined)
    ? options.type
    : "text";
  if (!ArrayPrototypeIncludes(TYPES, type)) {
    throw new TypeError(
      `Unknown response type. Possible types are "text", "arrayBuffer", "json", and "stream".`,
    );
  }
  return type;
}

function decode(bytes, type) {
  switch (type) {
    case "arrayBuffer": {
      const offset = TypedArrayPrototypeGetByteOffset(bytes);
      return ArrayBufferPrototypeSlice(
        TypedArrayPrototypeGetBuffer(bytes),
        offset,
        offset + TypedArrayPrototypeGetByteLength(bytes),
      );
    }
    case "json":
      return JSONParse(decoder.decode(bytes));
    case "stream":
      return new web.Response(bytes).body;
    default:
      return decoder.decode(bytes);
  }
}

function metadataOf(text) {
  return text === null || text === undefined ? null : JSONParse(text);
}

async function valueBytes(value) {
  if (typeof value === "string") {
    return encoder.encode(value);
  }
  const bytes = bufferBytes(value);
  if (bytes !== undefined) {
    return bytes;
  }
  if (ObjectPrototypeIsPrototypeOf(web.ReadableStream.prototype, value)) {
    return new Uint8Array(await new web.Response(value).arrayBuffer());
  }
  // Anything else is stored as its string, as workerd (and so miniflare)
  // converts it: `put(key, 42)` stores "42".
  return encoder.encode(StringCtor(value));
}

// `get` and `getWithMetadata` of many keys: a Map (as Workers returns) of
// each key to `shape(entry)`, or null where there is none.
async function getMany(index, keys, shape) {
  const found = await op_isopod_kv_get_many(index, ArrayPrototypeMap(keys, StringCtor));
  const values = new MapCtor();
  for (let i = 0; i < found.length; i++) {
    const { 0: name, 1: entry } = found[i];
    MapPrototypeSet(values, name, entry === null ? null : shape(entry));
  }
  return values;
}

class KvNamespace {
  #index;

  constructor(token, index) {
    if (token !== kToken) {
      throw new TypeError("Illegal constructor");
    }
    this.#index = index;
  }

  async get(key, options = undefined) {
    const type = typeOf(options);
    if (ArrayIsArray(key)) {
      return await getMany(this.#index, key, (entry) => decode(entry.value, type));
    }
    const entry = await op_isopod_kv_get(this.#index, StringCtor(key));
    return entry === null ? null : decode(entry.value, type);
  }

  async getWithMetadata(key, options = undefined) {
    const type = typeOf(options);
    if (ArrayIsArray(key)) {
      return await getMany(this.#index, key, (entry) => ({
        value: decode(entry.value, type),
        metadata: metadataOf(entry.metadata),
      }));
    }
    const entry = await op_isopod_kv_get(this.#index, StringCtor(key));
    if (entry === null) {
      return { value: null, metadata: null, cacheStatus: null };
    }
    return {
      value: decode(entry.value, type),
      metadata: metadataOf(entry.metadata),
      cacheStatus: null,
    };
  }

  async put(key, value, options = undefined) {
    const name = StringCtor(key);
    const bytes = await valueBytes(value);
    const given = options !== null && typeof options === "object" ? options : {};
    await op_isopod_kv_put(this.#index, name, bytes, {
      expiration: given.expiration === undefined ? null : NumberCtor(given.expiration),
      expirationTtl: given.expirationTtl === undefined
        ? null
        : NumberCtor(given.expirationTtl),
      metadata: given.metadata === undefined || given.metadata === null
        ? null
        : JSONStringify(given.metadata),
    });
  }

  async delete(key) {
    await op_isopod_kv_delete(this.#index, StringCtor(key));
  }

  async list(options = undefined) {
    const given = options !== null && typeof options === "object" ? options : {};
    const page = await op_isopod_kv_list(this.#index, {
      prefix: given.prefix === undefined || given.prefix === null ? null : StringCtor(given.prefix),
      limit: given.limit === undefined || given.limit === null ? null : NumberCtor(given.limit),
      cursor: given.cursor === undefined || given.cursor === null ? null : StringCtor(given.cursor),
    });
    const keys = ArrayPrototypeMap(page.keys, (key) => {
      const shown = { name: key.name };
      if (key.expiration !== null) shown.expiration = key.expiration;
      if (key.metadata !== null) shown.metadata = JSONParse(key.metadata);
      return shown;
    });
    const result = { keys, list_complete: page.list_complete, cacheStatus: null };
    if (!page.list_complete) {
      result.cursor = page.cursor;
    }
    return result;
  }
}

ObjectFreeze(KvNamespace.prototype);

// The object `env.NAME` holds for the app's binding at `index`.
export function kvBinding(index) {
  return new KvNamespace(kToken, index);
}
