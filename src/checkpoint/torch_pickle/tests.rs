use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use super::container::{read_zip_entry, LEGACY_MAGIC};
use super::unpickler::opcode;
use super::writer::{pickle_state_dict, Pickler};
use super::*;

/// The reference's checkpoints (`shared/parity`), overridable with `STARGAN_PARITY_DIR`.
fn parity_dir() -> PathBuf {
    std::env::var_os("STARGAN_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/parity")).into())
}

/// Tiny files written by real torch 2.13 (see `mixed_fixture_values` for their contents).
fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ckpt")).join(name)
}

/// A fresh, empty scratch folder for one test.
fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("torch_pickle_{test}_{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn get<'a>(tensors: &'a [(String, RawTensor)], name: &str) -> &'a RawTensor {
    &tensors.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no tensor {name}")).1
}

fn f32s(t: &RawTensor) -> Vec<f32> {
    assert_eq!(t.dtype, DType::F32);
    t.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn i64s(t: &RawTensor) -> Vec<i64> {
    assert_eq!(t.dtype, DType::I64);
    t.data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
}

fn ints(values: &[i64], dtype: DType) -> Vec<u8> {
    values.iter().flat_map(|&v| v.to_le_bytes()[..dtype.size()].to_vec()).collect()
}

/// A zip checkpoint with the given `data.pkl` and storage records.
fn zip_ckpt(pkl: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    zip_ckpt_with(pkl, storages, CompressionMethod::Stored)
}

fn zip_ckpt_with(pkl: &[u8], storages: &[(&str, &[u8])], method: CompressionMethod) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(method);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pkl).unwrap();
    for (key, data) in storages {
        zip.start_file(format!("archive/data/{key}"), opts).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// `{'t': _rebuild_tensor_v2(storage('0', numel), offset, shape, stride, False, {})}`.
fn tensor_pickle(dtype: DType, numel: usize, offset: usize, shape: &[usize], stride: &[usize]) -> Vec<u8> {
    let mut p = Pickler::default();
    p.out.extend([opcode::PROTO, 2, opcode::EMPTY_DICT]);
    p.str("t");
    p.global(&mut None, "torch._utils", "_rebuild_tensor_v2");
    p.op(opcode::MARK);
    p.op(opcode::MARK);
    p.str("storage");
    p.global(&mut None, "torch", dtype.storage_class());
    p.str("0");
    p.str("cpu");
    p.uint(numel);
    p.op(opcode::TUPLE);
    p.op(opcode::BINPERSID);
    p.uint(offset);
    p.uint_tuple(shape);
    p.uint_tuple(stride);
    p.op(opcode::NEWFALSE);
    p.op(opcode::EMPTY_DICT);
    p.op(opcode::TUPLE);
    p.op(opcode::REDUCE);
    p.op(opcode::SETITEM);
    p.op(opcode::STOP);
    p.out
}

fn legacy_pickle(body: &[u8]) -> Vec<u8> {
    [&[opcode::PROTO, 2][..], body, &[opcode::STOP]].concat()
}

/// A legacy container around `main` (a complete pickle) with the given storages.
fn legacy_ckpt(main: &[u8], storages: &[(&str, u64, &[u8])]) -> Vec<u8> {
    let mut out = legacy_pickle(&[&[opcode::LONG1, 10][..], &LEGACY_MAGIC].concat());
    out.extend(legacy_pickle(&[opcode::BININT2, 0xe9, 0x03])); // 1001
    out.extend(legacy_pickle(&[opcode::EMPTY_DICT]));
    out.extend(main);
    let mut keys = Pickler::default();
    keys.out.extend([opcode::PROTO, 2, opcode::EMPTY_LIST, opcode::MARK]);
    storages.iter().for_each(|(k, _, _)| {
        keys.str(k);
    });
    keys.out.extend([opcode::APPENDS, opcode::STOP]);
    out.extend(keys.out);
    for (_, count, data) in storages {
        out.extend(count.to_le_bytes());
        out.extend(*data);
    }
    out
}

#[test]
fn reads_the_reference_checkpoints() {
    let dir = parity_dir();
    // (scenario, label size): G sees 3 + c input channels, D predicts c classes.
    for (scenario, c) in [("celeba", 5), ("rafd", 8), ("both", 15)] {
        let g = read_state_dict(&dir.join(scenario).join("0-G.ckpt")).unwrap();
        assert_eq!(g.len(), 55, "{scenario} G");
        assert_eq!(g[0].0, "main.0.weight");
        assert_eq!(g[0].1.shape, [8, 3 + c, 7, 7]);
        assert_eq!(get(&g, "main.17.weight").shape, [3, 8, 7, 7]);
        assert_eq!(get(&g, "main.9.main.0.weight").shape, [32, 32, 3, 3]);
        let tracked = get(&g, "main.1.num_batches_tracked");
        assert_eq!((tracked.dtype, tracked.shape.len()), (DType::I64, 0));
        assert_eq!(i64s(tracked), [0]);
        assert!(f32s(get(&g, "main.1.weight")).iter().all(|&w| w == 1.0));
        for (name, t) in &g {
            assert_eq!(t.data.len(), t.numel() * t.dtype.size(), "{name}");
        }

        let legacy = read_state_dict(&dir.join(scenario).join("0-G.legacy.ckpt")).unwrap();
        assert_eq!(legacy, g, "{scenario}: legacy and zip G differ");

        let d = read_state_dict(&dir.join(scenario).join("0-D.ckpt")).unwrap();
        let d_classes = if scenario == "both" { 13 } else { c };
        assert_eq!(d.len(), 12);
        assert_eq!(get(&d, "main.0.weight").shape, [8, 3, 4, 4]);
        assert_eq!(get(&d, "conv1.weight").shape, [1, 128, 3, 3]);
        assert_eq!(get(&d, "conv2.weight").shape, [d_classes, 128, 1, 1]);
    }
}

#[test]
fn pickle_matches_torch_byte_for_byte() {
    // torch's data.pkl for the same dict, minus the trailing `_metadata` BUILD.
    let path = parity_dir().join("celeba/0-G.ckpt");
    let bytes = fs::read(&path).unwrap();
    let mut archive = ZipArchive::new(Cursor::new(&bytes[..])).unwrap();
    let torch_pkl = read_zip_entry(&mut archive, "0-G/data.pkl").unwrap().unwrap();
    let ours = pickle_state_dict(&read_state_dict_bytes(&bytes).unwrap());
    let (body, stop) = ours.split_at(ours.len() - 1);
    assert_eq!(stop, [opcode::STOP]);
    assert_eq!(&torch_pkl[..body.len()], body);
    assert_eq!(torch_pkl[body.len()], opcode::EMPTY_DICT, "torch's _metadata state follows");
}

#[test]
fn mixed_fixture_values() {
    // Written by torch.save({'state_dict': od, 'epoch': 3, ...}) in both containers, with
    // strided, offset, shared, expanded, scalar, empty and Parameter tensors of all dtypes.
    let zip = read_state_dict(&fixture("mixed.ckpt")).unwrap();
    let legacy = read_state_dict(&fixture("mixed.legacy.ckpt")).unwrap();
    assert_eq!(zip, legacy);
    let names: Vec<&str> = zip.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "transposed",
            "offset",
            "shared_a",
            "shared_b",
            "bool",
            "f16",
            "bf16",
            "i32",
            "i16",
            "i8",
            "u8",
            "scalar",
            "empty",
            "expanded",
            "param"
        ]
    );
    let t = |n| get(&zip, n);
    // arange(12).reshape(3, 4).t()
    assert_eq!(t("transposed").shape, [4, 3]);
    assert_eq!(f32s(t("transposed")), [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
    // arange(10, float64)[3:7]
    assert_eq!(t("offset").dtype, DType::F64);
    assert_eq!(t("offset").data, [3f64, 4., 5., 6.].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    assert_eq!(i64s(t("shared_a")), [0, 1, 2, 3]);
    assert_eq!(i64s(t("shared_b")), [1, 4]);
    assert_eq!((t("bool").dtype, &t("bool").data[..]), (DType::Bool, &[1, 0, 1][..]));
    // 1.5, -2.0, 65504.0 as IEEE half; 1.5, -2.0 as bfloat16.
    assert_eq!(t("f16").data, [0x00, 0x3e, 0x00, 0xc0, 0xff, 0x7b]);
    assert_eq!(t("bf16").data, [0xc0, 0x3f, 0x00, 0xc0]);
    assert_eq!(t("i32").data, ints(&[-1, i32::MAX.into()], DType::I32));
    assert_eq!(t("i16").data, ints(&[-3, 300], DType::I16));
    assert_eq!(t("i8").data, ints(&[-4, 5], DType::I8));
    assert_eq!(t("u8").data, [250, 7]);
    assert_eq!((t("scalar").shape.len(), f32s(t("scalar"))), (0, vec![3.25]));
    assert_eq!((&t("empty").shape[..], t("empty").data.len()), (&[0, 3][..], 0));
    assert_eq!(f32s(t("expanded")), [0., 1., 2., 0., 1., 2.]);
    assert_eq!(f32s(t("param")), [1., 1.]);
}

#[test]
fn writer_round_trip() {
    let dir = scratch_dir("round_trip");
    let mut tensors: Vec<(String, RawTensor)> = read_state_dict(&fixture("mixed.ckpt")).unwrap();
    tensors.push((
        "big.i64".into(),
        RawTensor {
            dtype: DType::I64,
            shape: vec![70_000],
            data: ints(&(0..70_000).collect::<Vec<_>>(), DType::I64),
        },
    ));
    let path = dir.join("5-G.ckpt");
    write_state_dict(&path, &tensors).unwrap();
    assert_eq!(read_state_dict(&path).unwrap(), tensors);
    // Overwriting goes through a temporary file that does not linger.
    write_state_dict(&path, &tensors[..2]).unwrap();
    assert_eq!(read_state_dict(&path).unwrap(), &tensors[..2]);
    let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, ["5-G.ckpt"]);

    // torch's layout: archive folder named after the file stem, every record 64-byte aligned.
    write_state_dict(&path, &tensors).unwrap();
    let mut archive = ZipArchive::new(fs::File::open(&path).unwrap()).unwrap();
    let names: Vec<String> = archive.file_names().map(str::to_owned).collect();
    assert_eq!(
        &names[..5],
        ["5-G/data.pkl", "5-G/.format_version", "5-G/.storage_alignment", "5-G/byteorder", "5-G/data/0"]
    );
    assert_eq!(&names[names.len() - 2..], ["5-G/version", "5-G/.data/serialization_id"]);
    for i in 0..archive.len() {
        let file = archive.by_index(i).unwrap();
        assert_eq!(file.compression(), CompressionMethod::Stored);
        assert_eq!(file.data_start() % 64, 0, "{}", file.name());
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn writer_rejects_inconsistent_tensors() {
    let dir = scratch_dir("writer_rejects");
    let t = RawTensor { dtype: DType::F32, shape: vec![2, 3], data: vec![0; 20] };
    let err = write_state_dict(&dir.join("x.ckpt"), &[("w".into(), t.clone())]).unwrap_err();
    assert!(matches!(err, PickleError::InvalidTensor { .. }), "{err}");
    let ok = RawTensor { data: vec![0; 24], ..t };
    let twice = [("w".into(), ok.clone()), ("w".into(), ok)];
    assert!(write_state_dict(&dir.join("x.ckpt"), &twice).is_err());
    assert!(!dir.join("x.ckpt").exists());
    let missing_dir = dir.join("no/such/dir/x.ckpt");
    let err = write_state_dict(&missing_dir, &[]).unwrap_err();
    assert!(err.to_string().contains("no/such/dir"), "{err}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn legacy_v1_tensors_and_storage_views() {
    // PyTorch 0.3 style: `_rebuild_tensor(storage, offset, size, stride)`, a Python 2 key
    // (BINSTRING), and a persistent id viewing elements [2, 5) of root storage "root".
    let mut p = Pickler::default();
    p.out.extend([opcode::PROTO, 2]);
    p.global(&mut None, "collections", "OrderedDict");
    p.out.extend([opcode::EMPTY_TUPLE, opcode::REDUCE]);
    p.out.extend([opcode::SHORT_BINSTRING, 1, b'w']);
    p.global(&mut None, "torch._utils", "_rebuild_tensor");
    p.op(opcode::MARK);
    p.op(opcode::MARK);
    p.str("storage");
    p.global(&mut None, "torch.cuda", "FloatStorage");
    p.str("root");
    p.str("cuda:0");
    p.uint(6);
    p.str("view");
    p.uint(2);
    p.uint(3);
    p.op(opcode::TUPLE3);
    p.op(opcode::TUPLE);
    p.op(opcode::BINPERSID);
    p.uint(1);
    p.uint_tuple(&[2]);
    p.uint_tuple(&[1]);
    p.op(opcode::TUPLE);
    p.op(opcode::REDUCE);
    p.op(opcode::SETITEM);
    p.op(opcode::STOP);
    let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let file = legacy_ckpt(&p.out, &[("root", 6, &data)]);
    let tensors = read_state_dict_bytes(&file).unwrap();
    assert_eq!(tensors.len(), 1);
    assert_eq!(tensors[0].0, "w");
    assert_eq!(f32s(&tensors[0].1), [3., 4.]);
}

#[test]
fn rejects_what_is_not_a_checkpoint() {
    let not = |bytes: &[u8]| read_state_dict_bytes(bytes).unwrap_err();
    assert!(matches!(not(b""), PickleError::NotACheckpoint(_)));
    assert!(matches!(not(b"hello world"), PickleError::NotACheckpoint(_)));
    assert!(matches!(not(&legacy_pickle(&[opcode::BININT1, 1])), PickleError::NotACheckpoint(_)));
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    zip.start_file("model/constants.pkl", SimpleFileOptions::default()).unwrap();
    let no_pickle = zip.finish().unwrap().into_inner();
    assert!(matches!(not(&no_pickle), PickleError::NotACheckpoint(_)));
    // A pickle of something other than a dict of tensors.
    let list = zip_ckpt(&legacy_pickle(&[opcode::EMPTY_LIST]), &[]);
    assert!(matches!(not(&list), PickleError::NoStateDict(_)));
    let err = read_state_dict(Path::new("/nonexistent/x.ckpt")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/x.ckpt"), "{err}");
}

#[test]
fn unknown_opcode_names_byte_and_position() {
    // Protocol 0 `INT` is not something torch.save writes.
    let err = read_state_dict_bytes(&zip_ckpt(b"\x80\x02I1\n.", &[])).unwrap_err();
    assert!(matches!(err, PickleError::UnsupportedOpcode { opcode: b'I', pos: 2, .. }), "{err:?}");
    assert!(err.to_string().contains("0x49 at byte 2"), "{err}");
}

#[test]
fn rejects_views_outside_their_storage() {
    let f32s_data = vec![0u8; 6 * 4];
    let read = |numel, offset, shape: &[usize], stride: &[usize], data: &[u8]| {
        let pkl = tensor_pickle(DType::F32, numel, offset, shape, stride);
        read_state_dict_bytes(&zip_ckpt(&pkl, &[("0", data)]))
    };
    assert_eq!(read(6, 0, &[2, 3], &[3, 1], &f32s_data).unwrap()[0].1.numel(), 6);
    assert_eq!(read(6, 5, &[1], &[1], &f32s_data).unwrap()[0].1.numel(), 1);
    let invalid = |r: Result<Vec<(String, RawTensor)>>| {
        assert!(matches!(r, Err(PickleError::InvalidTensor { .. })), "{r:?}")
    };
    invalid(read(6, 1, &[2, 3], &[3, 1], &f32s_data)); // offset pushes the end out
    invalid(read(6, 0, &[2, 3], &[4, 1], &f32s_data)); // stride too large
    invalid(read(6, 6, &[1], &[1], &f32s_data)); // offset past the end
    invalid(read(6, 0, &[1 << 40, 1 << 30], &[0, 0], &f32s_data)); // numel overflows
    invalid(read(6, 0, &[1 << 20, 1 << 10], &[0, 1], &f32s_data)); // stride past the end
    invalid(read(6, 0, &[1 << 20, 1 << 10], &[0, 0], &f32s_data)); // huge stride-0 expansion

    // The storage record must hold exactly the declared elements.
    let short = read(6, 0, &[2], &[1], &f32s_data[..20]);
    assert!(matches!(short, Err(PickleError::Corrupt(_))), "{short:?}");
    let missing = read_state_dict_bytes(&zip_ckpt(&tensor_pickle(DType::F32, 6, 0, &[1], &[1]), &[]));
    assert!(matches!(missing, Err(PickleError::Corrupt(_))), "{missing:?}");
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let mut body = vec![opcode::EMPTY_TUPLE];
    body.extend(std::iter::repeat_n(opcode::TUPLE1, 1_000_000));
    let err = read_state_dict_bytes(&zip_ckpt(&legacy_pickle(&body), &[])).unwrap_err();
    assert!(matches!(err, PickleError::Malformed { .. }), "{err}");
}

#[test]
fn truncated_files_fail_cleanly() {
    let mut files =
        vec![fs::read(fixture("mixed.ckpt")).unwrap(), fs::read(fixture("mixed.legacy.ckpt")).unwrap()];
    for name in ["celeba/0-G.ckpt", "celeba/0-G.legacy.ckpt"] {
        files.push(fs::read(parity_dir().join(name)).unwrap());
    }
    for bytes in &files {
        // Every cut of the small fixtures; ~500 spread over the big ones, pickle first.
        let step = (bytes.len() / 500).max(1);
        let cuts = (0..bytes.len()).step_by(step).chain(0..bytes.len().min(9000));
        for cut in cuts {
            assert!(read_state_dict_bytes(&bytes[..cut]).is_err(), "cut at {cut} of {}", bytes.len());
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    let mut files =
        vec![fs::read(fixture("mixed.ckpt")).unwrap(), fs::read(fixture("mixed.legacy.ckpt")).unwrap()];
    let legacy_g = fs::read(parity_dir().join("celeba/0-G.legacy.ckpt")).unwrap();
    // The pickles of the big legacy file: everything before the first storage.
    files.push(legacy_g[..9000].to_vec());
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for (f, bytes) in files.iter().enumerate() {
        for i in 0..bytes.len() {
            for flip in [0xff, 0x01, 0x80].into_iter().take(if f == 2 { 1 } else { 3 }) {
                let mut bad = bytes.clone();
                bad[i] ^= flip;
                let _ = read_state_dict_bytes(&bad);
            }
        }
        // Several simultaneous random edits, splicing the big file's tail back on.
        for _ in 0..2000 {
            let mut bad = bytes.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % bad.len();
                bad[i] = next() as u8;
            }
            if f == 2 {
                bad.extend_from_slice(&legacy_g[9000..]);
            }
            let _ = read_state_dict_bytes(&bad);
        }
    }
}

/// A deflated entry is refused before it is inflated when it would expand past the budget (the
/// 1.28 MB file that took `info` to 2.2 GB), and a stored one may not hold more than it declares.
#[test]
fn deflated_entries_cannot_inflate_past_the_budget() {
    let pkl = tensor_pickle(DType::F32, 1, 0, &[1], &[1]);
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let deflated = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    zip.start_file("archive/data.pkl", deflated).unwrap();
    zip.write_all(&pkl).unwrap();
    zip.start_file("archive/data/0", deflated).unwrap();
    // 80 MB of zeros deflate to well under 1 MB.
    zip.write_all(&vec![0u8; 80 << 20]).unwrap();
    let bytes = zip.finish().unwrap().into_inner();
    assert!(bytes.len() < 1 << 20, "{}", bytes.len());
    let err = read_state_dict_bytes(&bytes).unwrap_err().to_string();
    assert!(err.contains("inflates to 83886080 bytes"), "{err}");
    // Within the budget, a deflated checkpoint still reads.
    let small = zip_ckpt_with(&pkl, &[("0", &1.5f32.to_le_bytes())], CompressionMethod::Deflated);
    assert_eq!(f32s(get(&read_state_dict_bytes(&small).unwrap(), "t")), vec![1.5]);
}
