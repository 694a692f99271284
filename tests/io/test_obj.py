import numpy as np
import pytest

from facelab.errors import AssetFormatError
from facelab.io.obj import read_obj, read_obj_vertices, write_obj

QUAD_OBJ = """# a quad and a triangle sharing an edge, with a UV seam on vertex 1
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
v 2 0 0
vt 0 0
vt 1 0
vt 1 1
vt 0 1
vt 0.5 0
vt 0.9 0.1
f 1/1 2/2 3/3 4/4
f 2/5 5/6 3/3
"""


def test_quads_are_fan_triangulated_with_per_corner_uvs(tmp_path):
    path = tmp_path / "m.obj"
    path.write_text(QUAD_OBJ)
    mesh = read_obj(path)
    assert mesh.verts.shape == (5, 3)
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3], [1, 4, 2]])
    np.testing.assert_array_equal(mesh.faces_uv, [[0, 1, 2], [0, 2, 3], [4, 5, 2]])
    np.testing.assert_array_equal(mesh.polygon_ids, [0, 0, 1])
    # vertex 1 has two UVs (a seam): corner UVs differ for the same vertex
    assert mesh.faces_uv[0, 1] != mesh.faces_uv[2, 0]
    np.testing.assert_array_equal(read_obj_vertices(path), mesh.verts)


def test_write_read_round_trip(tmp_path):
    mesh_path = tmp_path / "m.obj"
    mesh_path.write_text(QUAD_OBJ)
    mesh = read_obj(mesh_path)
    write_obj(tmp_path / "out.obj", mesh.verts, mesh.faces, mesh.uv, mesh.faces_uv)
    again = read_obj(tmp_path / "out.obj")
    np.testing.assert_allclose(again.verts, mesh.verts)
    np.testing.assert_array_equal(again.faces, mesh.faces)
    np.testing.assert_array_equal(again.faces_uv, mesh.faces_uv)


@pytest.mark.parametrize("text,match", [("v 0 0 0\nf 1 2 3\n", "out of range"), ("hello\n", "no vertices"),
                                        ("v 0 0 x\nf 1 1 1\n", "unreadable")])
def test_bad_obj(tmp_path, text, match):
    path = tmp_path / "bad.obj"
    path.write_text(text)
    with pytest.raises(AssetFormatError, match=match):
        read_obj(path)
