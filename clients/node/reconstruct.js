#!/usr/bin/env node
// A facerecon client in Node.js: sends a photo to the gRPC Pipeline service (`facerecon serve pipeline`)
// and writes the returned mesh as a Wavefront OBJ, plus result.json.
//
//   npm ci
//   node reconstruct.js HOST:PORT photo.jpg face.obj [--result result.json] [--all-faces]
//                       [--token-file FILE] [--ca ca.pem [--cert client.pem --key client.key]] [--deadline-s 60]
//
// The protocol is loaded at run time from ../../protos (or $FACERECON_PROTOS): facerecon/v1/pipeline.proto.
// Arrays arrive as Tensors: dtype + shape + row-major little-endian bytes; the mesh is in the image's
// camera frame (x right, y down, z away), so, like facerecon's own exporters, the OBJ gets (x, -y, -z): y up.
// Prints one JSON line describing what it wrote. Exit codes: 0 written, 1 call failed, 2 usage, 3 no face.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const MAX_MESSAGE = 64 * 1024 * 1024;
const PROTOS = process.env.FACERECON_PROTOS || path.resolve(__dirname, '..', '..', 'protos');

function usage(message) {
  if (message) console.error(`reconstruct.js: ${message}`);
  console.error('usage: node reconstruct.js HOST:PORT PHOTO OUT.obj [--result FILE] [--all-faces] ' +
    '[--token-file FILE] [--ca PEM [--cert PEM --key PEM]] [--deadline-s S]');
  process.exit(2);
}

function parseArgs(argv) {
  const positional = [];
  const options = { deadlineS: 60 };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => (i + 1 < argv.length ? argv[++i] : usage(`${arg} needs a value`));
    if (arg === '--result') options.result = value();
    else if (arg === '--all-faces') options.allFaces = true;
    else if (arg === '--token-file') options.tokenFile = value();
    else if (arg === '--ca') options.ca = value();
    else if (arg === '--cert') options.cert = value();
    else if (arg === '--key') options.key = value();
    else if (arg === '--deadline-s') options.deadlineS = Number(value());
    else if (arg.startsWith('--')) usage(`unknown option ${arg}`);
    else positional.push(arg);
  }
  if (positional.length !== 3) usage('expected HOST:PORT PHOTO OUT.obj');
  [options.address, options.photo, options.out] = positional;
  return options;
}

const ITEM = { DTYPE_UINT8: 1, DTYPE_INT32: 4, DTYPE_INT64: 8, DTYPE_FLOAT32: 4, DTYPE_FLOAT64: 8 };

// A Tensor as a flat array of numbers, checked against its shape.
function values(tensor, name) {
  const size = ITEM[tensor.dtype];
  if (!size) throw new Error(`${name}: unsupported dtype ${tensor.dtype}`);
  const count = tensor.shape.reduce((a, b) => a * Number(b), 1);
  const data = tensor.data;
  if (data.length !== count * size) throw new Error(`${name}: ${data.length} bytes for shape [${tensor.shape}]`);
  const read = {
    DTYPE_UINT8: (i) => data.readUInt8(i),
    DTYPE_INT32: (i) => data.readInt32LE(i * 4),
    DTYPE_INT64: (i) => Number(data.readBigInt64LE(i * 8)),
    DTYPE_FLOAT32: (i) => data.readFloatLE(i * 4),
    DTYPE_FLOAT64: (i) => data.readDoubleLE(i * 8),
  }[tensor.dtype];
  const out = new Array(count);
  for (let i = 0; i < count; i++) out[i] = read(i);
  return out;
}

function objText(mesh) {
  const v = values(mesh.vertices, 'vertices');
  const t = values(mesh.triangles, 'triangles');
  const uv = mesh.uvs ? values(mesh.uvs, 'uvs') : null;
  const lines = [`# facerecon mesh, topology ${mesh.topology}, units ${mesh.units} (y up, z towards the viewer)`];
  for (let i = 0; i < v.length; i += 3) lines.push(`v ${v[i]} ${-v[i + 1]} ${-v[i + 2]}`);
  if (uv) for (let i = 0; i < uv.length; i += 2) lines.push(`vt ${uv[i]} ${uv[i + 1]}`);
  for (let i = 0; i < t.length; i += 3) {
    const [a, b, c] = [t[i] + 1, t[i + 1] + 1, t[i + 2] + 1];
    lines.push(uv ? `f ${a}/${a} ${b}/${b} ${c}/${c}` : `f ${a} ${b} ${c}`);
  }
  return lines.join('\n') + '\n';
}

function credentials(options) {
  if (!options.ca) return grpc.credentials.createInsecure();
  const read = (file) => (file ? fs.readFileSync(file) : null);
  return grpc.credentials.createSsl(read(options.ca), read(options.key), read(options.cert));
}

function main() {
  const options = parseArgs(process.argv.slice(2));
  const definition = protoLoader.loadSync('facerecon/v1/pipeline.proto', {
    includeDirs: [PROTOS],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const v1 = grpc.loadPackageDefinition(definition).facerecon.v1;
  const client = new v1.Pipeline(options.address, credentials(options), {
    'grpc.max_receive_message_length': MAX_MESSAGE,
    'grpc.max_send_message_length': MAX_MESSAGE,
  });
  const metadata = new grpc.Metadata();
  if (options.tokenFile) metadata.add('authorization', `Bearer ${fs.readFileSync(options.tokenFile, 'utf8').trim()}`);
  const request = {
    image: { encoded: fs.readFileSync(options.photo) },
    source: path.basename(options.photo),
  };
  if (options.allFaces) request.all_faces = true;
  const started = Date.now();
  client.Reconstruct(request, metadata, { deadline: Date.now() + options.deadlineS * 1000 }, (error, response) => {
    client.close();
    if (error) {
      console.error(`reconstruct.js: ${grpc.status[error.code]}: ${error.details}`);
      process.exit(1);
    }
    const rec = response.reconstruction;
    if (rec.reconstructions.length === 0) {
      console.error(`reconstruct.js: no face found in ${options.photo}`);
      process.exit(3);
    }
    const stages = rec.reconstructions[0].stages;
    const final = stages[stages.length - 1];
    fs.writeFileSync(options.out, objText(final.mesh));
    if (options.result) fs.writeFileSync(options.result, response.result_json);
    console.log(JSON.stringify({
      faces: rec.faces.length,
      stage: final.stage,
      plugin: final.plugin,
      topology: final.mesh.topology,
      vertices: Number(final.mesh.vertices.shape[0]),
      triangles: Number(final.mesh.triangles.shape[0]),
      obj: options.out,
      milliseconds: Date.now() - started,
    }));
  });
}

main();
