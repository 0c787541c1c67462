// The page of `facerecon view`: one reconstruction folder's meshes in three.js, offline.
//
// Bundled with three.js by esbuild (`npm run build`) into static/viewer.bundle.js, which the Python side
// inlines into the page (outputs/viewer/page.py). The page carries its data as JSON in
// <script id="facerecon-data">: a list of entries (one per input photo and face), each with its stages
// (mesh URL: a server path or a data: URL in the static index.html), the 68 landmarks per stage in image
// pixels, the photo's URL (null for a mesh file viewed alone) and size. Rendering is on demand (after a
// change, not every frame): cheap on a laptop's battery and on software WebGL.

import * as THREE from 'three';
import { OrbitControls } from 'three/examples/jsm/controls/OrbitControls.js';
import { GLTFLoader } from 'three/examples/jsm/loaders/GLTFLoader.js';
import { RoomEnvironment } from 'three/examples/jsm/environments/RoomEnvironment.js';

const data = JSON.parse(document.getElementById('facerecon-data').textContent);
const $ = (id) => document.getElementById(id);

const state = {
  entry: null, // the selected entry of data.entries
  stage: null, // the selected stage's name
  texture: true,
  normalMap: true,
  landmarks: true,
  meshVisible: true,
};

// ---------------------------------------------------------------------------------------------- scene

const canvas = $('view');
const renderer = createRenderer();
renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
renderer.outputColorSpace = THREE.SRGBColorSpace;
const scene = new THREE.Scene();
scene.background = new THREE.Color(0x20242b);
// Image-based light from a neutral room, so any glTF material (also a metallic one) shows its shape,
// plus a light at the camera for shading that follows the orbit.
const pmrem = new THREE.PMREMGenerator(renderer);
scene.environment = pmrem.fromScene(new RoomEnvironment(), 0.04).texture;
scene.environmentIntensity = 0.35;
const camera = new THREE.PerspectiveCamera(30, 1, 0.1, 1000);
const headlight = new THREE.DirectionalLight(0xffffff, 0.9);
headlight.position.set(0.3, 0.4, 1);
camera.add(headlight);
scene.add(camera);
const controls = new OrbitControls(camera, canvas);
controls.addEventListener('change', render);

const stageRoot = new THREE.Group(); // the shown stage's meshes
const landmarkRoot = new THREE.Group(); // its landmarks as small spheres on the surface
scene.add(stageRoot, landmarkRoot);

const loader = new GLTFLoader();
const gltfCache = new Map(); // mesh URL -> Promise of the loaded glTF scene
let framedEntry = null; // the camera is framed once per entry, then kept when stages change
let loadToken = 0;

// Without WebGL 2 (turned off, a remote desktop, an old browser) the page says so instead of staying blank.
function createRenderer() {
  try {
    return new THREE.WebGLRenderer({ canvas, antialias: true });
  } catch (error) {
    showMessage('This viewer needs WebGL 2, which this browser does not provide (it may be turned off). '
      + 'Any current Chrome, Firefox, Safari or Edge has it.');
    setStatus('error');
    throw error;
  }
}

function render() {
  renderer.render(scene, camera);
}

function resize() {
  const { clientWidth: w, clientHeight: h } = canvas.parentElement;
  renderer.setSize(w, h, false);
  camera.aspect = w / Math.max(h, 1);
  camera.updateProjectionMatrix();
  render();
}
new ResizeObserver(resize).observe(canvas.parentElement);

function loadMesh(url) {
  if (!gltfCache.has(url)) {
    const loaded = new Promise((resolve, reject) => loader.load(url, (g) => resolve(prepare(g.scene)), undefined, reject));
    gltfCache.set(url, loaded.catch(async (error) => {
      throw new Error(await loadError(error));
    }));
  }
  return gltfCache.get(url);
}

// Why a mesh did not load: for an HTTP error of `facerecon view`, the server's reason (the body it sends),
// not only the status.
async function loadError(error) {
  if (!error.response) return error.message || String(error);
  const reason = await error.response.text().catch(() => '');
  return `the server answered ${error.response.status}${reason ? `: ${reason}` : ` ${error.response.statusText}`}`;
}

// Smooth normals where the file has none; remember each material's maps so the toggles can restore them.
function prepare(root) {
  root.traverse((node) => {
    if (!node.isMesh) return;
    if (!node.geometry.attributes.normal) node.geometry.computeVertexNormals();
    const materials = Array.isArray(node.material) ? node.material : [node.material];
    for (const m of materials) {
      m.flatShading = false;
      m.userData.map = m.map;
      m.userData.normalMap = m.normalMap;
      m.userData.color = m.color ? m.color.clone() : null;
    }
  });
  return root;
}

function materialsOf(root) {
  const out = [];
  root.traverse((node) => {
    if (node.isMesh) out.push(...(Array.isArray(node.material) ? node.material : [node.material]));
  });
  return out;
}

function applyToggles() {
  for (const m of materialsOf(stageRoot)) {
    m.map = state.texture ? m.userData.map : null;
    // Without its texture the surface is a light grey clay, whatever the base colour factor.
    if (m.userData.color) m.color.copy(state.texture || !m.userData.map ? m.userData.color : new THREE.Color(0.8, 0.8, 0.8));
    m.normalMap = state.normalMap ? m.userData.normalMap : null;
    m.needsUpdate = true;
  }
  stageRoot.visible = state.meshVisible;
  landmarkRoot.visible = state.landmarks && state.meshVisible;
  $('photo-landmarks').style.display = state.landmarks ? '' : 'none';
  render();
}

function hasNormalMap(root) {
  return materialsOf(root).some((m) => m.userData.normalMap);
}

// Frame the camera on the mesh: looking along -z of the file frame (y up, z towards the viewer), as the
// photo's camera saw the face, at a distance that fits the bounding sphere.
function frame(root) {
  const box = new THREE.Box3().setFromObject(root);
  const sphere = box.getBoundingSphere(new THREE.Sphere());
  const distance = sphere.radius / Math.sin(THREE.MathUtils.degToRad(camera.fov / 2)) * 1.05;
  camera.near = distance / 100;
  camera.far = distance * 100;
  camera.position.copy(sphere.center).add(new THREE.Vector3(0, 0, distance));
  camera.updateProjectionMatrix();
  controls.target.copy(sphere.center);
  controls.update();
}

// ------------------------------------------------------------------------------------------ landmarks

// Each 68-point landmark (image pixels) is found on the surface by a ray along the photo's viewing
// direction: `rays` is the 4x4 matrix (row-major) taking image-frame points (x right, y down in pixels,
// z away from the camera) into the mesh file's frame; without it the landmarks show on the photo only.
const landmarkCache = new Map(); // stage -> its landmarks' surface points and sphere radius (rays cost)

function placeLandmarks(root, stage) {
  landmarkRoot.clear();
  if (!stage.landmarks68 || !stage.pixel_to_file) return;
  if (!landmarkCache.has(stage)) landmarkCache.set(stage, castLandmarks(root, stage));
  const { points, radius } = landmarkCache.get(stage);
  const dots = new THREE.InstancedMesh(
    new THREE.SphereGeometry(radius, 12, 8),
    new THREE.MeshBasicMaterial({ color: 0x3df58a }),
    points.length,
  );
  points.forEach((p, i) => dots.setMatrixAt(i, new THREE.Matrix4().makeTranslation(p.x, p.y, p.z)));
  landmarkRoot.add(dots);
}

function castLandmarks(root, stage) {
  const matrix = new THREE.Matrix4().set(...stage.pixel_to_file);
  const box = new THREE.Box3().setFromObject(root);
  const size = box.getSize(new THREE.Vector3()).length();
  const raycaster = new THREE.Raycaster();
  const radius = size * 0.006;
  const points = [];
  root.updateMatrixWorld(true);
  for (const p of stage.landmarks68) {
    if (!p) continue;
    const near = new THREE.Vector3(p[0], p[1], -1e7).applyMatrix4(matrix);
    const far = new THREE.Vector3(p[0], p[1], 1e7).applyMatrix4(matrix);
    const direction = far.clone().sub(near).normalize();
    // Start just outside the bounding box: a ray from very far loses precision.
    const start = new THREE.Ray(near, direction).intersectBox(box.clone().expandByScalar(size * 0.01), new THREE.Vector3());
    if (!start) continue;
    raycaster.set(start.addScaledVector(direction, -size * 0.01), direction);
    const hit = raycaster.intersectObject(root, true)[0];
    if (hit) points.push(hit.point.addScaledVector(direction, -radius * 0.5));
  }
  return { points, radius };
}

function drawPhotoLandmarks(entry, stage) {
  const svg = $('photo-landmarks');
  const [w, h] = entry.image_size;
  svg.setAttribute('viewBox', `-0.5 -0.5 ${w} ${h}`); // pixel centres at integers
  const r = Math.max(w, h) / 250;
  svg.innerHTML = (stage.landmarks68 || [])
    .filter((p) => p)
    .map((p) => `<circle cx="${p[0]}" cy="${p[1]}" r="${r}"></circle>`)
    .join('');
}

// ------------------------------------------------------------------------------------------- controls

async function showStage(name) {
  const entry = state.entry;
  const stage = entry.stages.find((s) => s.stage === name) || entry.stages[entry.stages.length - 1];
  state.stage = stage.stage;
  const token = ++loadToken;
  setStatus('loading');
  showMessage('');
  for (const b of document.querySelectorAll('#stages button')) b.classList.toggle('on', b.dataset.stage === stage.stage);
  drawPhotoLandmarks(entry, stage);
  let root;
  try {
    root = await loadMesh(stage.mesh);
  } catch (error) {
    if (token !== loadToken) return;
    // Nothing of the previous choice stays on screen under this one's name.
    stageRoot.clear();
    landmarkRoot.clear();
    $('info').textContent = `${entry.label} · ${stageLabel(stage)}`;
    showMessage(`Could not load ${stage.stage} mesh: ${error.message || error}`);
    updateHash();
    render();
    setStatus('error');
    return;
  }
  if (token !== loadToken) return; // another choice came meanwhile
  stageRoot.clear();
  stageRoot.add(root);
  if (framedEntry !== entry) {
    frame(root);
    framedEntry = entry;
  }
  placeLandmarks(root, stage);
  const normalToggle = $('normal-map');
  normalToggle.disabled = !hasNormalMap(root);
  normalToggle.title = normalToggle.disabled ? 'this stage has no normal map' : 'apply the normal map';
  $('texture').disabled = !materialsOf(root).some((m) => m.userData.map);
  $('landmarks').disabled = !stage.landmarks68;
  showInfo(entry, stage, root);
  applyToggles();
  updateHash();
  setStatus('ready');
}

function showEntry(index, stageName) {
  state.entry = data.entries[index];
  for (const li of document.querySelectorAll('#inputs li')) li.classList.toggle('on', Number(li.dataset.index) === index);
  const entry = state.entry;
  showPhoto(entry);
  const stages = $('stages');
  stages.innerHTML = '';
  for (const s of entry.stages) {
    const button = document.createElement('button');
    button.textContent = s.stage;
    button.dataset.stage = s.stage;
    button.addEventListener('click', () => showStage(s.stage));
    stages.append(button);
  }
  return showStage(stageName || state.stage || entry.stages[entry.stages.length - 1].stage);
}

// The photo beside the mesh, or a line saying why there is none. `data-status` on #photo-box: loading,
// shown or missing.
function showPhoto(entry) {
  const photo = $('photo');
  const box = $('photo-box');
  const missing = (text) => {
    photo.hidden = true;
    photo.removeAttribute('src');
    $('photo-note').textContent = text;
    $('photo-note').hidden = false;
    box.dataset.status = 'missing';
  };
  const why = entry.photo_is_preview
    ? `No photo: ${entry.input} is not where it was at the run, and ${entry.label} has no preview.png.`
    : `The photo ${entry.input} could not be loaded.`;
  photo.hidden = false;
  $('photo-note').hidden = true;
  // Where the photo has moved since the run, the folder's preview.png stands in (no landmarks on it).
  photo.alt = entry.photo_is_preview ? `preview of ${entry.label} (the photo is not at ${entry.input})` : `the photo of ${entry.label}`;
  box.classList.toggle('preview', entry.photo_is_preview);
  if (entry.photo === null) return missing(`${entry.input}: a mesh file alone, without a photo or landmarks.`);
  if (!entry.photo) return missing(why); // the static page: neither the photo nor preview.png could be read
  box.dataset.status = 'loading';
  photo.onload = () => {
    if (state.entry === entry) box.dataset.status = 'shown';
  };
  photo.onerror = () => {
    if (state.entry === entry) missing(why);
  };
  photo.src = entry.photo;
}

function stageLabel(stage) {
  return stage.plugin ? `${stage.stage} (${stage.plugin})` : stage.stage;
}

function showInfo(entry, stage, root) {
  let vertices = 0;
  root.traverse((n) => {
    if (n.isMesh) vertices += n.geometry.attributes.position.count;
  });
  $('info').textContent = `${entry.label} · ${stageLabel(stage)} · ${vertices.toLocaleString('en')} vertices`;
}

function showMessage(text) {
  const box = $('message');
  box.textContent = text;
  box.hidden = !text;
}

// `data-status` on <body>: loading, ready or error (what a test or a script waits for).
function setStatus(status) {
  document.body.dataset.status = status;
}

function updateHash() {
  const params = new URLSearchParams({ input: state.entry.id, stage: state.stage });
  history.replaceState(null, '', `#${params}`);
}

function buildInputList() {
  const list = $('inputs');
  data.entries.forEach((entry, index) => {
    const li = document.createElement('li');
    li.dataset.index = index;
    li.textContent = entry.label;
    li.title = entry.input;
    li.addEventListener('click', () => showEntry(index));
    list.append(li);
  });
}

function bindToggle(id, key) {
  const box = $(id);
  box.checked = state[key];
  box.addEventListener('change', () => {
    state[key] = box.checked;
    applyToggles();
  });
}

bindToggle('texture', 'texture');
bindToggle('normal-map', 'normalMap');
bindToggle('landmarks', 'landmarks');
buildInputList();
resize();

// For scripts and tests: the state, and what the controls do.
window.facereconViewer = {
  state,
  showStage,
  showEntry,
  setMeshVisible(visible) {
    state.meshVisible = visible;
    applyToggles();
  },
  render,
};

if (data.entries.length === 0) {
  showMessage('No reconstructions in this folder.');
  setStatus('error');
} else {
  const params = new URLSearchParams(location.hash.slice(1));
  const index = Math.max(0, data.entries.findIndex((e) => e.id === params.get('input')));
  showEntry(index, params.get('stage'));
}
