#!/usr/bin/env node
// Validate .glb / .gltf files with the Khronos glTF validator (npm gltf-validator).
//
//   make gltf-validator     # once: npm ci here (the locked package-lock.json)
//   node scripts/gltf-validator/validate.js a.glb b.glb ...
//
// Prints one JSON line per file: {"file", "errors", "warnings", "infos", "hints", "messages": [...]},
// messages being the validator's own ({code, message, severity (0 error .. 3 hint), pointer}).
// Exit code 0 when no file has an error, 1 otherwise, 2 on bad usage or an unreadable file.
'use strict';

const fs = require('fs');
const path = require('path');
let validator;
try {
  validator = require('gltf-validator');
} catch (error) {
  if (error.code !== 'MODULE_NOT_FOUND') throw error;
  console.error('validate.js: npm gltf-validator is not installed: run `make gltf-validator` (npm ci in scripts/gltf-validator) first');
  process.exit(2);
}

async function validate(file) {
  const bytes = new Uint8Array(fs.readFileSync(file));
  const report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 100,
    // A .gltf's external buffers and images, read from beside it; a .glb carries its own.
    externalResourceFunction: (uri) =>
      fs.promises.readFile(path.resolve(path.dirname(file), decodeURIComponent(uri))).then((d) => new Uint8Array(d)),
  });
  const issues = report.issues;
  return {
    file,
    errors: issues.numErrors,
    warnings: issues.numWarnings,
    infos: issues.numInfos,
    hints: issues.numHints,
    messages: issues.messages,
  };
}

async function main(files) {
  if (files.length === 0) {
    console.error('usage: node validate.js FILE.glb [FILE.glb ...]');
    return 2;
  }
  let failed = false;
  for (const file of files) {
    let result;
    try {
      result = await validate(file);
    } catch (error) {
      console.error(`${file}: ${error}`);
      return 2;
    }
    console.log(JSON.stringify(result));
    failed = failed || result.errors > 0;
  }
  return failed ? 1 : 0;
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
