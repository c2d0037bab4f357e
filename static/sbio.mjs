// The ES module entry of the sbio-client package: sbio.js (CommonJS/UMD, the
// one source) re-exported, as the default export and by name.
import sbio from "./sbio.js";

export default sbio;
export const { connect, Connection, SbioError, version, defaults, applyPatch } = sbio;
