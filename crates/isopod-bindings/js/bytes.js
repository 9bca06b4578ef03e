// What both bindings share: the bytes of an ArrayBuffer or of any view on
// one (a typed array or a DataView), without a copy; undefined for
// anything else.
import { primordials } from "ext:core/mod.js";

const {
  ArrayBuffer,
  ArrayBufferIsView,
  DataView,
  DataViewPrototypeGetBuffer,
  DataViewPrototypeGetByteLength,
  DataViewPrototypeGetByteOffset,
  ObjectPrototypeIsPrototypeOf,
  TypedArrayPrototypeGetBuffer,
  TypedArrayPrototypeGetByteLength,
  TypedArrayPrototypeGetByteOffset,
  Uint8Array,
} = primordials;

export function bufferBytes(value) {
  if (ObjectPrototypeIsPrototypeOf(ArrayBuffer.prototype, value)) {
    return new Uint8Array(value);
  }
  if (!ArrayBufferIsView(value)) {
    return undefined;
  }
  if (ObjectPrototypeIsPrototypeOf(DataView.prototype, value)) {
    return new Uint8Array(
      DataViewPrototypeGetBuffer(value),
      DataViewPrototypeGetByteOffset(value),
      DataViewPrototypeGetByteLength(value),
    );
  }
  return new Uint8Array(
    TypedArrayPrototypeGetBuffer(value),
    TypedArrayPrototypeGetByteOffset(value),
    TypedArrayPrototypeGetByteLength(value),
  );
}
