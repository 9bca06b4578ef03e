// The D1 binding: `env.BINDING` of a D1 database, as Workers defines it
// (prepare -> bind -> first / all / run / raw, batch, exec). Values are
// mapped as D1 maps them; each query is one async op.
//
// Invariant: an object holds only its binding's index; the ops find the
// database among the isolate's own app's bindings.
import { core, primordials } from "ext:core/mod.js";
import { bufferBytes } from "ext:isopod_bindings/bytes.js";

const {
  ArrayFrom,
  ArrayIsArray,
  ArrayPrototypeMap,
  ArrayPrototypePush,
  ArrayPrototypeUnshift,
  Error,
  NumberIsSafeInteger,
  ObjectPrototypeIsPrototypeOf,
  String: StringCtor,
  Symbol,
  TypeError,
  ObjectFreeze,
} = primordials;

const { op_isopod_d1_query, op_isopod_d1_batch, op_isopod_d1_exec } = core.ops;

const kToken = Symbol("d1Binding");

// What a batch sends for a prepared statement (undefined for anything
// else); set by the class, which alone reads its private fields.
let partsOf;

// A bound value as the op takes it, or D1's type error.
function param(value) {
  if (value === null) return { t: 0 };
  switch (typeof value) {
    case "number":
      return NumberIsSafeInteger(value) ? { t: 1, n: value } : { t: 2, n: value };
    case "boolean":
      return { t: 1, n: value ? 1 : 0 };
    case "string":
      return { t: 3, s: value };
    case "object": {
      const bytes = bufferBytes(value);
      if (bytes !== undefined) return { t: 4, b: ArrayFrom(bytes) };
    }
  }
  throw new Error(
    `D1_TYPE_ERROR: Type '${typeof value}' not supported for value '${StringCtor(value)}'`,
  );
}

function rowObject(columns, row) {
  const object = {};
  for (let i = 0; i < columns.length; i++) {
    // A blob is an array of its bytes, as D1 (and miniflare) return it.
    object[columns[i]] = row[i];
  }
  return object;
}

function result(answer) {
  return {
    success: true,
    meta: answer.meta,
    results: ArrayPrototypeMap(answer.rows, (row) => rowObject(answer.columns, row)),
  };
}

class D1PreparedStatement {
  #index;
  #sql;
  #params;

  constructor(token, index, sql, params) {
    if (token !== kToken) {
      throw new TypeError("Illegal constructor");
    }
    this.#index = index;
    this.#sql = sql;
    this.#params = params;
  }

  bind(...values) {
    return new D1PreparedStatement(
      kToken,
      this.#index,
      this.#sql,
      ArrayPrototypeMap(values, param),
    );
  }

  async first(column = undefined) {
    const answer = await op_isopod_d1_query(this.#index, this.#sql, this.#params, "first");
    if (answer.rows.length === 0) {
      return null;
    }
    const row = rowObject(answer.columns, answer.rows[0]);
    if (column === undefined) {
      return row;
    }
    const name = StringCtor(column);
    if (!(name in row)) {
      throw new Error(`D1_COLUMN_NOTFOUND: Column not found (${name})`);
    }
    return row[name];
  }

  async all() {
    return result(await op_isopod_d1_query(this.#index, this.#sql, this.#params, "all"));
  }

  async run() {
    return result(await op_isopod_d1_query(this.#index, this.#sql, this.#params, "all"));
  }

  async raw(options = undefined) {
    const answer = await op_isopod_d1_query(this.#index, this.#sql, this.#params, "raw");
    const rows = answer.rows;
    if (options !== null && typeof options === "object" && options.columnNames === true) {
      ArrayPrototypeUnshift(rows, answer.columns);
    }
    return rows;
  }

  static {
    partsOf = (statement) =>
      #sql in statement ? { sql: statement.#sql, params: statement.#params } : undefined;
  }
}

class D1Database {
  #index;

  constructor(token, index) {
    if (token !== kToken) {
      throw new TypeError("Illegal constructor");
    }
    this.#index = index;
  }

  prepare(query) {
    return new D1PreparedStatement(kToken, this.#index, StringCtor(query), []);
  }

  async batch(statements) {
    if (!ArrayIsArray(statements)) {
      throw new TypeError("batch() takes an array of prepared statements");
    }
    const sent = [];
    for (let i = 0; i < statements.length; i++) {
      const parts = statements[i] !== null && typeof statements[i] === "object"
        ? partsOf(statements[i])
        : undefined;
      if (parts === undefined) {
        throw new TypeError("batch() takes an array of prepared statements");
      }
      ArrayPrototypePush(sent, parts);
    }
    const answers = await op_isopod_d1_batch(this.#index, sent);
    return ArrayPrototypeMap(answers, result);
  }

  async exec(query) {
    return await op_isopod_d1_exec(this.#index, StringCtor(query));
  }
}

ObjectFreeze(D1PreparedStatement.prototype);
ObjectFreeze(D1Database.prototype);

// The object `env.NAME` holds for the app's binding at `index`.
export function d1Binding(index) {
  return new D1Database(kToken, index);
}
