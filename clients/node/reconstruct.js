#!/usr/bin/env node
// A facerecon client in Node.js: sends a photo to the gRPC Pipeline service (`facerecon serve pipeline`)
// and writes the returned mesh of each face as a Wavefront OBJ, plus result.json. README.md says more.
//
//   npm ci
//   node reconstruct.js HOST:PORT photo.jpg face.obj [--result result.json] [--all-faces]
//                       [--token-file FILE] [--ca ca.pem] [--cert client.pem --key client.key] [--deadline-s 60]
//
// The protocol is loaded at run time from ../../protos (or $FACERECON_PROTOS): facerecon/v1/pipeline.proto.
// Arrays arrive as Tensors: dtype + shape + row-major little-endian bytes; the mesh is in the image's
// camera frame (x right, y down, z away), and the OBJ gets (x, -y, -z): the image frame of facerecon's
// exporters (`facerecon reconstruct --frame image`): y up, z towards the camera, in the mesh's units.
// Every output is checked before the call, written to a temporary file beside it, and renamed into place
// once all are written. Prints one JSON line describing what it wrote.
// Exit codes: 0 written, 1 call (or writing) failed, 2 usage or local input error, 3 no face.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// grpc-js names an IP address as the TLS server name, which Node flags as deprecated (DEP0123) on stderr.
process.noDeprecation = true;

const MAX_MESSAGE = 64 * 1024 * 1024;
const MAX_PHOTO = MAX_MESSAGE - 64 * 1024; // room for the rest of the request
const MAX_DEADLINE_S = 1e6; // as facerecon's services/remote.py
const PROTOS = process.env.FACERECON_PROTOS || path.resolve(__dirname, '..', '..', 'protos');

const HELP = `usage: node reconstruct.js HOST:PORT PHOTO OUT.obj [options]

Sends PHOTO to facerecon's gRPC Pipeline service (facerecon serve pipeline) and writes the mesh of the
last stage the server ran as a Wavefront OBJ.

arguments:
  HOST:PORT          the server: HOST:PORT, [IPv6]:PORT, dns:[//AUTHORITY/]HOST:PORT or unix:PATH
                     (the port is required; facerecon serves on 50051 unless told otherwise)
  PHOTO              the image file to send (any format the server decodes; at most ${MAX_PHOTO} bytes)
  OUT.obj            the OBJ of the first (largest) face; when several faces come back, face i (its
                     index in result.json, 1, 2, ...) goes to OUT-face<i>.obj beside it, e.g.
                     face.obj, face-face1.obj, face-face2.obj

options:
  --result FILE      also write result.json: the server's, rewritten to describe the OBJ files written
                     here (frames.files "image", landmarks68_3d and bounds in the image frame, and each
                     written stage's "mesh" naming its OBJ relative to FILE's folder)
  --all-faces        ask for every face, not only the largest (unset: as the server is configured)
  --token-file FILE  send the bearer token in FILE (one line; surrounding blanks ignored)
  --ca PEM           use TLS, trusting server certificates signed by this CA (default: plaintext)
  --cert PEM --key PEM
                     use TLS with this client certificate and key; without --ca the server is verified
                     against the default CAs: the file $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names, else
                     Node's own (add yours with NODE_EXTRA_CA_CERTS=FILE)
  --deadline-s S     give up on the call after S seconds (default 60; 0 < S <= ${MAX_DEADLINE_S})
  -h, --help         print this help and exit
  --                 end of options (for a PHOTO or OUT.obj starting with -)

The OBJ is in the photo's image frame: x to the image's right, y up, z towards the camera, in the
mesh's units (pixels for facerecon's default pipeline: OBJ vertex (x, y, z) lies on image pixel (x, -y)).
Existing output files are replaced; nothing is written unless the call succeeds and every file can be.

exit codes: 0 written, 1 the call or writing the outputs failed, 2 usage or local input error (nothing
sent), 3 no face found (nothing written)
`;

// An error that ends the run with one line on stderr and this exit code.
class Failure extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}
const usageError = (message) => new Failure(2, message);
// An fs error's message without the path and call it names: "ENOENT: no such file or directory".
const reason = (error) => String(error.message).replace(/, \w+ '.*'$/, '');

function parseArgs(argv) {
  const positional = [];
  const options = { deadlineS: 60 };
  let onlyPositional = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw usageError(`${arg} needs a value`);
      return argv[++i];
    };
    if (onlyPositional || !arg.startsWith('-') || arg === '-') positional.push(arg);
    else if (arg === '--') onlyPositional = true;
    else if (arg === '-h' || arg === '--help') options.help = true;
    else if (arg === '--result') options.result = value();
    else if (arg === '--all-faces') options.allFaces = true;
    else if (arg === '--token-file') options.tokenFile = value();
    else if (arg === '--ca') options.ca = value();
    else if (arg === '--cert') options.cert = value();
    else if (arg === '--key') options.key = value();
    else if (arg === '--deadline-s') options.deadlineS = deadline(value());
    else throw usageError(`unknown option ${arg}`);
  }
  if (options.help) return options;
  if (positional.length !== 3) throw usageError(`expected HOST:PORT PHOTO OUT.obj, got ${positional.length} argument(s)`);
  [options.address, options.photo, options.out] = positional;
  if (Boolean(options.cert) !== Boolean(options.key)) throw usageError('--cert and --key go together');
  return options;
}

function deadline(text) {
  const seconds = text.trim() === '' ? NaN : Number(text);
  if (!(seconds > 0 && seconds <= MAX_DEADLINE_S)) {
    throw usageError(`--deadline-s must be a number of seconds in (0, ${MAX_DEADLINE_S}], got ${JSON.stringify(text)}`);
  }
  return seconds;
}

// The address's host, checked to have a port (gRPC would silently use 443); null for unix: sockets.
function addressHost(address) {
  if (address === '') throw usageError('the address is empty: give HOST:PORT');
  if (address.startsWith('unix:')) return null;
  const target = address.replace(/^dns:(\/\/[^/]*\/)?/, '');
  if (/^(\[[^\]]*\]|[^:]*)$/.test(target)) {
    throw usageError(`address ${address} has no port (gRPC would silently use 443): give HOST:PORT`);
  }
  const match = /^(\[[0-9a-fA-F:.]+\]|[^:[\]/]+):(\d+)$/.exec(target);
  if (!match || Number(match[2]) < 1 || Number(match[2]) > 65535) {
    throw usageError(`address ${address} is not HOST:PORT (or [IPv6]:PORT) with a port in 1..65535`);
  }
  return match[1].replace(/^\[|\]$/g, '');
}

const isLoopback = (host) => host === null || host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);

// A local file the user named with `option`, or a one-line usage error.
function readLocal(option, file) {
  try {
    if (fs.statSync(file).isDirectory()) throw usageError(`${option} ${file} is a folder`);
    return fs.readFileSync(file);
  } catch (error) {
    throw error instanceof Failure ? error : usageError(`${option} ${file}: cannot read it (${reason(error)})`);
  }
}

function readPhoto(file) {
  let stat;
  try {
    stat = fs.statSync(file);
  } catch (error) {
    throw usageError(`${file}: cannot read the photo (${reason(error)})`);
  }
  if (stat.isDirectory()) throw usageError(`${file} is a folder, not a photo`);
  if (!stat.isFile()) throw usageError(`${file} is not a regular file`);
  if (stat.size > MAX_PHOTO) throw usageError(`${file} is ${stat.size} bytes: a photo may be at most ${MAX_PHOTO}`);
  return readLocal('photo', file);
}

// The token: one line of printable ASCII (never echoed: it is a secret).
function readToken(file) {
  const token = readLocal('--token-file', file).toString('utf8').trim();
  if (token === '') throw usageError(`--token-file ${file} is empty`);
  if (/[\r\n]/.test(token)) throw usageError(`--token-file ${file} must hold the token on one line`);
  if (!/^[\x20-\x7e]+$/.test(token)) throw usageError(`--token-file ${file}: the token may only hold printable ASCII`);
  return token;
}

function credentials(options) {
  if (!options.ca && !options.cert) return grpc.credentials.createInsecure();
  const ca = options.ca ? readLocal('--ca', options.ca) : null; // null: the default CAs (see HELP)
  const cert = options.cert ? readLocal('--cert', options.cert) : null;
  const key = options.key ? readLocal('--key', options.key) : null;
  const parse = (option, file, make) => {
    try {
      return make();
    } catch (error) {
      throw usageError(`${option} ${file}: not a PEM ${option === '--key' ? 'private key' : 'certificate'} (${error.message})`);
    }
  };
  if (ca) parse('--ca', options.ca, () => new crypto.X509Certificate(ca));
  if (cert) {
    const x509 = parse('--cert', options.cert, () => new crypto.X509Certificate(cert));
    const privateKey = parse('--key', options.key, () => crypto.createPrivateKey(key));
    if (!x509.checkPrivateKey(privateKey)) throw usageError(`--key ${options.key} does not match --cert ${options.cert}`);
  }
  try {
    return grpc.credentials.createSsl(ca, key, cert);
  } catch (error) {
    throw usageError(`cannot use the TLS files: ${error.message}`);
  }
}

// Output checks, before the call: each output's folder exists and is writable, the output is not a folder,
// and no two of the input and the outputs are the same file (compared by real path; an output that does
// not exist yet by its folder's real path and its name).
function checkOutputs(outputs, photo) {
  const realPath = (file) => {
    try {
      return fs.realpathSync(file);
    } catch {
      return path.join(fs.realpathSync(path.dirname(path.resolve(file))), path.basename(file));
    }
  };
  const seen = new Map([[realPath(photo), `the photo ${photo}`]]);
  for (const [what, file] of outputs) {
    const folder = path.dirname(path.resolve(file));
    try {
      if (!fs.statSync(folder).isDirectory()) throw usageError(`${what} ${file}: ${folder} is not a folder`);
      fs.accessSync(folder, fs.constants.W_OK | fs.constants.X_OK);
    } catch (error) {
      throw error instanceof Failure ? error : usageError(`${what} ${file}: cannot write in ${folder} (${reason(error)})`);
    }
    if (fs.statSync(file, { throwIfNoEntry: false })?.isDirectory()) throw usageError(`${what} ${file} is a folder`);
    const real = realPath(file);
    if (seen.has(real)) throw usageError(`${what} ${file} is the same file as ${seen.get(real)}`);
    seen.set(real, `${what} ${file}`);
  }
}

// Write every file to a temporary file beside it, then rename them all into place; on any error remove
// the temporary files, so an existing output keeps its old content and no new output is left half-written.
function writeAll(files) {
  const temps = [];
  let current;
  let renaming = false;
  try {
    for (const [file, data] of files) {
      current = file;
      temps.push(path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`));
      fs.writeFileSync(temps[temps.length - 1], data, { flag: 'wx' });
    }
    renaming = true;
    files.forEach(([file], i) => {
      current = file;
      fs.renameSync(temps[i], file);
    });
  } catch (error) {
    for (const temp of temps) fs.rmSync(temp, { force: true });
    const outcome = renaming ? 'the outputs before it were replaced' : 'no output was written';
    throw new Failure(1, `cannot write ${current} (${reason(error)}); ${outcome}`);
  }
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

// The mesh's vertices in the image frame: (x, -y, -z) of its camera frame.
function imageVertices(mesh) {
  const v = values(mesh.vertices, 'vertices');
  for (let i = 0; i < v.length; i += 3) [v[i + 1], v[i + 2]] = [-v[i + 1], -v[i + 2]];
  return v;
}

// The OBJ of a mesh, given its image-frame vertices `v`.
function objText(mesh, v) {
  const t = values(mesh.triangles, 'triangles');
  const uv = mesh.uvs ? values(mesh.uvs, 'uvs') : null;
  const lines = [`# facerecon mesh, topology ${mesh.topology}, units ${mesh.units}, image frame (x right, y up, z towards the camera)`];
  for (let i = 0; i < v.length; i += 3) lines.push(`v ${v[i]} ${v[i + 1]} ${v[i + 2]}`);
  if (uv) for (let i = 0; i < uv.length; i += 2) lines.push(`vt ${uv[i]} ${uv[i + 1]}`);
  for (let i = 0; i < t.length; i += 3) {
    const [a, b, c] = [t[i] + 1, t[i + 1] + 1, t[i + 2] + 1];
    lines.push(uv ? `f ${a}/${a} ${b}/${b} ${c}/${c}` : `f ${a} ${b} ${c}`);
  }
  return lines.join('\n') + '\n';
}

// OUT.obj for the first face, OUT-face<i>.obj for face i after it.
function objPath(out, index, first) {
  if (first) return out;
  const ext = path.extname(out) || '.obj';
  return path.join(path.dirname(out), `${path.basename(out, path.extname(out))}-face${index}${ext}`);
}

const round3 = (x) => Math.round(x * 1000) / 1000;

// The server's result.json (its mesh entries in the head frame, no files) made to describe what is written
// here: the OBJs in the image frame. `faces`: per reconstruction, its OBJ and its stages' image-frame vertices.
function clientResult(text, faces, resultFile) {
  const result = JSON.parse(text);
  if (result.reconstructions?.length !== faces.length) throw new Error('result.json does not match the records');
  result.reconstructions.forEach((entry, f) => {
    const { index, file, stages } = faces[f];
    if (entry.face_index !== index) throw new Error('result.json does not match the records');
    const m = entry.frames.head_to_image;
    const toImage = (p) => [0, 1, 2].map((r) => round3(m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3]));
    entry.frames.files = 'image';
    entry.stages.forEach((stage, s) => {
      const v = stages[s];
      stage.units = entry.frames.image.units; // the OBJ's (image frame), as bounds and landmarks68_3d below
      stage.mesh = s === stages.length - 1 ? path.relative(path.dirname(path.resolve(resultFile)), path.resolve(file)) : null;
      if (stage.landmarks68_3d) stage.landmarks68_3d = stage.landmarks68_3d.map((p) => p && toImage(p));
      const lo = [Infinity, Infinity, Infinity];
      const hi = [-Infinity, -Infinity, -Infinity];
      for (let i = 0; i < v.length; i++) {
        lo[i % 3] = Math.min(lo[i % 3], v[i]);
        hi[i % 3] = Math.max(hi[i % 3], v[i]);
      }
      stage.bounds = [lo.map(round3), hi.map(round3)];
    });
  });
  // as facerecon writes it: indented, each innermost list of numbers on one line
  return JSON.stringify(result, null, 1).replace(/\[\s*([-+\d.e,\s]+?)\s*\]/g, (_, inner) => `[${inner.replace(/\s+/g, ' ')}]`) + '\n';
}

function loadProtocol() {
  const where = process.env.FACERECON_PROTOS ? `$FACERECON_PROTOS=${PROTOS}` : PROTOS;
  if (!fs.statSync(path.join(PROTOS, 'facerecon', 'v1', 'pipeline.proto'), { throwIfNoEntry: false })?.isFile()) {
    throw usageError(`${where} holds no facerecon/v1/pipeline.proto`);
  }
  try {
    const definition = protoLoader.loadSync('facerecon/v1/pipeline.proto', {
      includeDirs: [PROTOS],
      keepCase: true,
      longs: Number,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    return grpc.loadPackageDefinition(definition).facerecon.v1;
  } catch (error) {
    throw usageError(`cannot load facerecon/v1/pipeline.proto from ${where} (${error.message})`);
  }
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  if (options.help) {
    process.stdout.write(HELP);
    return;
  }
  const host = addressHost(options.address);
  const image = readPhoto(options.photo);
  const outputs = [['OUT.obj', options.out]];
  if (options.result !== undefined) outputs.push(['--result', options.result]);
  checkOutputs(outputs, options.photo);
  const v1 = loadProtocol();
  const metadata = new grpc.Metadata();
  if (options.tokenFile) metadata.add('authorization', `Bearer ${readToken(options.tokenFile)}`);
  const channel = credentials(options);
  if (options.tokenFile && !options.ca && !options.cert && !isLoopback(host)) {
    console.error(`reconstruct.js: warning: the token goes to ${host} in plaintext; use --ca (TLS) to protect it`);
  }

  const client = new v1.Pipeline(options.address, channel, {
    // replies are not bounded (a group photo's fine reconstructions pass 100 MB), requests are, as the server's
    'grpc.max_receive_message_length': -1,
    'grpc.max_send_message_length': MAX_MESSAGE,
  });
  const request = { image: { encoded: image }, source: path.basename(options.photo) };
  if (options.allFaces) request.all_faces = true;
  const started = Date.now();
  const response = await new Promise((resolve, reject) => {
    client.Reconstruct(request, metadata, { deadline: Date.now() + options.deadlineS * 1000 }, (error, reply) => {
      client.close();
      if (!error) return resolve(reply);
      let details = String(error.details).replace(/\s*Resolution note:\s*$/, ''); // grpc-js adds it, often empty
      if (error.code === grpc.status.UNIMPLEMENTED) details += ` (is ${options.address} a Pipeline server: facerecon serve pipeline?)`;
      reject(new Failure(1, `${grpc.status[error.code] ?? error.code}: ${details}`));
    });
  });

  const rec = response.reconstruction;
  if (rec.reconstructions.length === 0) throw new Failure(3, `no face found in ${options.photo}`);
  const faces = rec.reconstructions.map((r, i) => {
    const final = r.stages[r.stages.length - 1];
    const file = objPath(options.out, r.face_index, i === 0);
    const stages = r.stages.map((s) => imageVertices(s.mesh));
    return { index: r.face_index, final, file, obj: objText(final.mesh, stages[stages.length - 1]), stages };
  });
  // the names of faces after the first are known only now: check them as the first ones were
  checkOutputs([...faces.map((f) => ['OBJ', f.file]), ...outputs.slice(1)], options.photo);
  const files = faces.map((f) => [f.file, f.obj]);
  if (options.result !== undefined) {
    if (!response.result_json) throw new Failure(1, 'the server sent no result.json');
    files.push([options.result, clientResult(response.result_json, faces, options.result)]);
  }
  writeAll(files);
  const first = faces[0].final;
  console.log(JSON.stringify({
    faces: rec.faces.length,
    written: faces.length,
    stage: first.stage,
    plugin: first.plugin,
    topology: first.mesh.topology,
    units: first.mesh.units,
    frame: 'image',
    vertices: Number(first.mesh.vertices.shape[0]),
    triangles: Number(first.mesh.triangles.shape[0]),
    obj: options.out,
    objs: faces.map((f) => f.file),
    result: options.result ?? null,
    milliseconds: Date.now() - started,
  }));
}

main().catch((error) => {
  const message = String(error instanceof Failure ? error.message : `failed: ${error.message}`).replace(/\s+/g, ' ').trim();
  console.error(`reconstruct.js: ${message}`);
  process.exit(error instanceof Failure ? error.code : 1);
});
