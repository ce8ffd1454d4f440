// `filter` in JavaScript: the same contract and output as the Rust example (examples/filter),
// built with componentize-js against the typed stage world.
//
// Parameters: `field` (required); `op` (default `eq`): eq, ne, lt, le, gt, ge, contains,
// exists; `value` (required unless `op` is `exists`). Numbers compare as numbers (an int field
// with an int value exactly, otherwise as floats), `true`/`false` with booleans, anything else
// as text (by Unicode code point, which is UTF-8 byte order). A missing field, a field of
// another type than the value, or NaN never matches. Matching events pass unchanged.
//
// In the JavaScript bindings an s64 is a BigInt, a variant is `{ tag, val }`, and an error
// result is a thrown value.

const OPS = ["eq", "ne", "lt", "le", "gt", "ge", "contains", "exists"];
const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;

let config = null;

// Rust's `i64::from_str`: an optional sign and decimal digits, in range.
function parseInt64(text) {
  if (!/^[+-]?[0-9]+$/.test(text)) return null;
  const value = BigInt(text);
  return value >= I64_MIN && value <= I64_MAX ? value : null;
}

// Rust's `f64::from_str`: decimal with optional exponent, or inf/infinity/nan in any case.
function parseFloat64(text) {
  if (/^[+-]?(inf|infinity)$/i.test(text)) return text.startsWith("-") ? -Infinity : Infinity;
  if (/^[+-]?nan$/i.test(text)) return NaN;
  if (/^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$/.test(text)) return Number(text);
  return null;
}

function parseBool(text) {
  return text === "true" ? true : text === "false" ? false : null;
}

// -1, 0 or 1 comparing strings by code point.
function compareText(a, b) {
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i] < y[i] ? -1 : 1;
  }
  return x.length === y.length ? 0 : x.length < y.length ? -1 : 1;
}

function sign(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

// How the field's value orders against the parameter, or null if incomparable.
function compare(value) {
  switch (value.tag) {
    case "int":
      if (config.int !== null) return sign(value.val, config.int);
      if (config.float === null) return null;
      return Number.isNaN(config.float) ? null : sign(Number(value.val), config.float);
    case "float":
      if (config.float === null || Number.isNaN(value.val) || Number.isNaN(config.float)) return null;
      return sign(value.val, config.float);
    case "boolean":
      return config.bool === null ? null : sign(Number(value.val), Number(config.bool));
    case "text":
      return compareText(value.val, config.value);
    default:
      return null;
  }
}

function matches(event) {
  const field = event.fields.find((f) => f.name === config.field);
  if (field === undefined) return false;
  if (config.op === "exists") return true;
  if (config.op === "contains") return field.value.tag === "text" && field.value.val.includes(config.value);
  const o = compare(field.value);
  if (o === null) return false;
  switch (config.op) {
    case "eq": return o === 0;
    case "ne": return o !== 0;
    case "lt": return o < 0;
    case "le": return o <= 0;
    case "gt": return o > 0;
    default: return o >= 0;
  }
}

export const typedHandler = {
  init(params) {
    const get = (name) => {
      const pair = params.find(([n]) => n === name);
      return pair === undefined ? undefined : pair[1];
    };
    const op = get("op") === undefined ? "eq" : get("op");
    if (!OPS.includes(op)) {
      throw `parameter \`op\` = ${JSON.stringify(op)} is not one of eq, ne, lt, le, gt, ge, contains, exists`;
    }
    if (op !== "exists" && get("value") === undefined) throw "missing required parameter `value`";
    if (get("field") === undefined) throw "missing required parameter `field`";
    const value = (get("value") ?? "").trim();
    config = {
      field: get("field").trim(),
      op,
      value,
      int: parseInt64(value),
      float: parseFloat64(value),
      bool: parseBool(value),
    };
  },

  process(events) {
    return events.filter(matches);
  },

  tick(_nowMs) {
    return [];
  },
};
