from agentmesh.identity.v1 import identity_service_pb2 as pb


async def test_sign_up_then_who_am_i(identity):
    account = await identity.sign_up()
    me = await identity.stub.WhoAmI(pb.WhoAmIRequest(), metadata=account.md)
    assert me.user.id == account.user.id
    assert me.tier == pb.TIER_FREE
    assert list(me.roles) == [pb.ROLE_OWNER]
